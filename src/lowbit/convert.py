"""lowbit export: convert a model between checkpoint formats.

Sources: a float Hugging Face directory (or the default model / a hub id), a directory lowbit
or another tool wrote in a registered integer format (compressed-tensors, GPTQ v1/v2, AWQ
GEMM; io/formats.py), or a .gguf file (io/gguf_reader.py). Targets: those integer formats,
and GGUF (io/gguf_writer.py) with a llama.cpp file type.

Where the target can hold the source's codes, they are repacked as they are (lossless: the
written file dequantizes to bit-identical weights):
  integer -> integer   per module, when the target takes its bits, group size, grid
                       (sym/asym), g_idx (act-order) and scale dtype (GPTQ/AWQ store fp16);
                       a layer AWQ cannot pack (out % 8 != 0) is kept in float, also exact
  GGUF -> GGUF         per tensor, when the file type's mix gives it the source's block type
                       (the bytes are copied); F32 (and F16 from F16) tensors are exact
  GGUF -> integer      Q8_0 / Q4_0 / Q5_0 tensors (w = d * (q - 2**(b-1)), fp16 d per 32 weights) and
                       Q6_K / Q3_K (scale d * sc per 16 weights) where the target holds those bits,
                       groups and scales (fp16 in GPTQ/AWQ, fp32 in compressed-tensors)
  any -> GGUF F32      the dequantized weights, exactly
When only the scales do not fit (fp32 scales of a compressed-tensors file into GPTQ/AWQ's
fp16), the codes are kept and the scales rounded (a relative change below 2^-11). Everything
else is dequantized and re-quantized with round-to-nearest: to GGUF with the --gguf-type mix
(default Q8_0, the closest to lossless), to integer formats with the source's bits / group
size / grid, or --bits / --group-size / --sym / --asym. A lossy conversion logs one warning line.
Outputs are written atomically and an existing OUT is refused unless overwrite=True.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lowbit.errors import LowbitError
from lowbit.formats.int_affine import QuantizedTensor, quantize_rtn, round_scale
from lowbit.io.atomic import check_output
from lowbit.io.formats import FORMATS, get_format
from lowbit.spec import QuantSpec

log = logging.getLogger(__name__)
DEFAULT_GGUF_TYPE = "Q8_0"  # with no --gguf-type: 8.5 bits/weight, the least lossy quantized type
DEFAULT_BITS, DEFAULT_GROUP = 4, 128  # float sources into integer formats, as `lowbit quantize`


def targets() -> list[str]:
    return sorted(FORMATS) + ["gguf"]


def export(model: str | None, format: str, out: str | Path, *, gguf_type: str | None = None,
           bits: int | None = None, group_size: int | None = None, symmetric: bool | None = None,
           overwrite: bool = False, allow_pickle: bool = False, warn=log.warning, ollama: bool = False) -> dict:
    """Convert MODEL to `format` at OUT. Returns a summary: what was read and written, and
    how many tensors were copied exactly, had their scales rounded, or were re-quantized.
    warn(line) receives the one-line warning of a lossy conversion (default: the log).
    ollama: also write an Ollama Modelfile beside OUT.gguf (format gguf)."""
    out = Path(out)
    check_format_arguments(format, out, gguf_type, bits, group_size, symmetric)
    if ollama and format != "gguf":
        raise LowbitError("--ollama writes a Modelfile for a GGUF file: use it with --format gguf")
    check_output(out, overwrite)
    from lowbit.io.load import load_model

    t0 = time.perf_counter()
    loaded = load_model(model, allow_pickle)
    if ollama:  # before any writing: a tokenizer without a usable chat template is refused first
        from lowbit.io.ollama import modelfile
        modelfile(loaded.tokenizer, out.name)
    if format == "gguf":
        summary = _to_gguf(loaded, out, (gguf_type or DEFAULT_GGUF_TYPE).upper(), overwrite)
        if ollama:
            from lowbit.io.ollama import write_modelfile
            summary["modelfile"] = str(write_modelfile(out, loaded.tokenizer))
    elif loaded.quantized:
        summary = _repack(loaded, format, out, bits, group_size, symmetric, overwrite)
    elif loaded.kind == "gguf":
        summary = _from_gguf(loaded, format, out, bits, group_size, symmetric, overwrite)
    else:
        summary = _quantize_float(loaded, format, out, bits, group_size, symmetric, overwrite)
    summary.update(source=loaded.source, source_kind=loaded.kind, format=format, out=str(out),
                   seconds=time.perf_counter() - t0)
    summary["lossless"] = not summary["requantized"] and not summary["scales_rounded"]
    summary["warning"] = None if summary["lossless"] else _warning(summary)
    if summary["warning"]:
        warn(summary["warning"])
    return summary


def check_format_arguments(format, out: Path, gguf_type, bits, group_size, symmetric, command: str = "export") -> None:
    """Bad input, found before anything is loaded: one line saying what is wrong and the fix
    (quantize asks the same of its output: flags a format cannot use are refused, not ignored)."""
    if format not in targets():
        what = "export" if command == "export" else "output"
        raise LowbitError(f"unknown {what} format {format!r}: choose one of {', '.join(targets())}")
    if format == "gguf":
        from lowbit.io.gguf_mixes import parse_file_type
        if bits is not None or group_size is not None or symmetric is not None:
            raise LowbitError("--bits, --group-size and --sym/--asym do not apply to GGUF: "
                              "choose the grid with --gguf-type (e.g. Q4_K_M, Q8_0)")
        if out.suffix.lower() != ".gguf":
            raise LowbitError(f"GGUF output {out} must end in .gguf (lowbit and llama.cpp recognise the "
                              "file by it): give -o NAME.gguf")
        parse_file_type(gguf_type or DEFAULT_GGUF_TYPE)
        return
    if gguf_type is not None:
        raise LowbitError(f"--gguf-type applies to --format gguf only, not {format}: drop it, "
                          "or use --bits / --group-size for integer formats")
    if out.suffix.lower() == ".gguf":
        raise LowbitError(f"output {out} ends in .gguf but --format is {format}, which writes a directory: "
                          "choose another -o, or --format gguf")
    if bits is not None or group_size is not None:  # same checks and messages as quantize
        QuantSpec(bits=bits or DEFAULT_BITS, group_size=DEFAULT_GROUP if group_size is None else group_size)
    held = get_format(format).bits
    if bits is not None and bits not in held:  # what the format states it holds
        raise LowbitError(f"{get_format(format).label} holds {'/'.join(map(str, held))}-bit codes only, not {bits}: use --bits "
                          f"{min([b for b in held if b >= bits] or [held[-1]])}, or --format compressed-tensors")


def _warning(s: dict) -> str:
    parts = []
    if s["requantized"]:
        parts.append(f"{s['requantized']} of {s['tensors']} tensors re-quantized with round-to-nearest"
                     f" ({s['requantize_reason']})")
    if s["scales_rounded"]:
        parts.append(f"{s['scales_rounded']} tensors kept their codes with scales rounded to "
                     f"{s['scale_dtype']} (relative change about 2^-11)")
    return "this conversion is lossy: " + "; ".join(parts)


# ---- integer formats ------------------------------------------------------------------------

def _source_bits_fit(fmt: str, tensors: dict[str, QuantizedTensor], bits: int | None) -> None:
    if bits is not None:
        return
    held = get_format(fmt).bits
    wrong = sorted({qt.bits for qt in tensors.values() if qt.grid_name() == "int"} - set(held))
    if wrong:
        nearest = min([b for b in held if b >= wrong[0]] or [held[-1]])
        raise LowbitError(f"{fmt} holds {'/'.join(map(str, held))}-bit codes but the source has {wrong[0]}-bit "
                          f"codes: pass --bits {nearest} to re-quantize (lossy), or use --format compressed-tensors")


def _wanted(qt: QuantizedTensor, bits, group_size, symmetric) -> QuantSpec:
    return QuantSpec(bits=qt.bits if bits is None else bits,
                     group_size=qt.group_size if group_size is None else group_size,
                     symmetric=qt.symmetric if symmetric is None else symmetric,
                     method_args={"act_order": qt.act_order, "static_groups": not qt.act_order})


def _holds(qt: QuantizedTensor, fitted: QuantSpec, fmt: str) -> bool:
    """The target stores these codes and grid as they are (scales aside)."""
    group_ok = fitted.group_size == qt.group_size or (qt.group_size == 0 and fitted.group_size == -1)
    g_idx_ok = not qt.act_order or get_format(fmt).g_idx
    return fitted.bits == qt.bits and group_ok and fitted.symmetric == qt.symmetric and g_idx_ok


def _repack(loaded, fmt: str, out: Path, bits, group_size, symmetric, overwrite) -> dict:
    from lowbit.io.checkpoint import save_quantized

    writer = get_format(fmt)
    _source_bits_fit(fmt, loaded.quantized, bits)
    tensors: dict[str, QuantizedTensor] = {}
    counts = {"exact": 0, "scales_rounded": 0, "requantized": 0, "kept_float": 0}
    reasons: set[str] = set()
    for name, qt in loaded.quantized.items():
        grid = qt.grid_name()
        if grid != "int":  # NF4 / FP4 / FP8 codes: kept where the target holds them, else re-quantized
            if grid in writer.holds and bits is None and group_size is None and symmetric is None:
                tensors[name] = qt
                counts["exact"] += 1
                continue
            if "int" not in writer.holds:
                raise LowbitError(f"{writer.label} does not store the {grid} grid of {name} (it holds "
                                  f"{', '.join(writer.holds)}): quantize the float model with --format {fmt} instead")
            # the default width where the target holds it, else its widest per channel (bitsandbytes: int8 rows)
            b, g = (DEFAULT_BITS, DEFAULT_GROUP) if DEFAULT_BITS in writer.bits else (writer.bits[-1], -1)
            spec = writer.fit(name, QuantSpec(bits=bits or b, group_size=g if group_size is None else group_size,
                                              symmetric=True if symmetric is None else symmetric), qt.shape)
            tensors[name] = replace(quantize_rtn(qt.dequantize(), spec.bits, spec.symmetric, spec.group_size,
                                                 "minmax", spec.scale_dtype), act=spec.act)
            reasons.add(f"{grid} -> int{spec.bits}")
            counts["requantized"] += 1
            continue
        want = _wanted(qt, bits, group_size, symmetric)
        try:
            fitted = writer.fit(name, want, qt.shape)
        except LowbitError:
            if fmt == "awq" and qt.shape[0] % 8:  # AWQ packs 8 output rows per word: keep it float (exact)
                counts["kept_float"] += 1
                continue
            raise
        if _holds(qt, fitted, fmt):
            scale = round_scale(qt.scale, fitted.scale_dtype)
            if torch.equal(scale, qt.scale):
                tensors[name] = qt
                counts["exact"] += 1
            else:
                tensors[name] = replace(qt, scale=scale)
                counts["scales_rounded"] += 1
            continue
        reasons.add(_reason(qt, fitted, fmt))
        W = qt.dequantize()
        new = quantize_rtn(W, fitted.bits, fitted.symmetric, fitted.group_size, "minmax", fitted.scale_dtype)
        tensors[name] = new
        counts["requantized"] += 1
    meta = {k: v for k, v in loaded.meta.items() if k not in ("lowbit_version", "format")}
    meta["base_model"] = loaded.meta.get("base_model") or loaded.source
    meta["exported_from"] = {"source": loaded.source, "format": loaded.meta.get("format"), **counts}
    save_quantized(out, loaded.model, loaded.tokenizer, tensors, meta, overwrite, fmt)
    return {**counts, "tensors": len(loaded.quantized), "requantize_reason": ", ".join(sorted(reasons)),
            "scale_dtype": writer.scale_dtype}


def _reason(qt: QuantizedTensor, fitted: QuantSpec, fmt: str) -> str:
    if fitted.bits != qt.bits:
        return f"{qt.bits} -> {fitted.bits} bits"
    if fitted.symmetric != qt.symmetric:
        return "symmetric <-> asymmetric grid"
    if qt.act_order and not get_format(fmt).g_idx:
        return f"{fmt} has no per-column g_idx (act-order)"
    return f"{fmt} stores group size {fitted.group_size}, not {qt.group_size}"


def _from_gguf(loaded, fmt: str, out: Path, bits, group_size, symmetric, overwrite) -> dict:
    """GGUF -> integer format: Q8_0 / Q4_0 / Q5_0 / Q6_K / Q3_K blocks are symmetric integer grids
    (gguf_codes), so their codes and scales move exactly where the target holds those bits, groups
    and scales; every other Linear is dequantized and re-quantized (RTN)."""
    from lowbit.pipeline.sequential import target_linears

    writer = get_format(fmt)
    spec = QuantSpec(bits=DEFAULT_BITS if bits is None else bits,
                     group_size=DEFAULT_GROUP if group_size is None else group_size,
                     symmetric=True if symmetric is None else symmetric)
    exact_codes = gguf_codes(Path(loaded.source), loaded.model)
    tensors: dict[str, QuantizedTensor] = {}
    counts = {"exact": 0, "scales_rounded": 0, "requantized": 0, "kept_float": 0}
    kinds: set[str] = set()
    for name, module in target_linears(loaded.model, spec).items():
        W = module.weight.detach()
        qt = exact_codes.get(name)
        if qt is not None and (bits in (None, qt.bits) and group_size in (None, qt.group_size)
                               and symmetric in (None, True)):
            try:
                fitted = writer.fit(name, _wanted(qt, None, None, None), qt.shape)
            except LowbitError:
                fitted = None
            if fitted is not None and _holds(qt, fitted, fmt):
                scale = round_scale(qt.scale, fitted.scale_dtype)
                if torch.equal(scale, qt.scale):
                    tensors[name] = qt
                    counts["exact"] += 1
                else:  # k-quant scales d * sc are exact in fp32, rarely in fp16: keep the codes
                    tensors[name] = replace(qt, scale=scale)
                    counts["scales_rounded"] += 1
                continue
        try:
            fitted = writer.fit(name, spec, tuple(W.shape))
        except LowbitError:
            if fmt == "awq" and W.shape[0] % 8:
                counts["kept_float"] += 1
                continue
            raise
        tensors[name] = quantize_rtn(W, fitted.bits, fitted.symmetric, fitted.group_size, "minmax",
                                     fitted.scale_dtype)
        counts["requantized"] += 1
        kinds.add(f"{fitted.bits}-bit groups of {fitted.group_size}")
    meta = {"base_model": loaded.source, "exported_from": {"source": loaded.source, "format": "gguf", **counts}}
    from lowbit.io.checkpoint import save_quantized
    save_quantized(out, loaded.model, loaded.tokenizer, tensors, meta, overwrite, fmt)
    return {**counts, "tensors": len(tensors) + counts["kept_float"],
            "requantize_reason": "dequantized GGUF weights to " + ", ".join(sorted(kinds)),
            "scale_dtype": writer.scale_dtype}


# GGML block types that are symmetric integer grids, w = scale * (q - 2**(bits-1)):
# type -> (bits, weights per group, bytes per block of the type)
_GGML_INT = {"Q8_0": (8, 32, 34), "Q4_0": (4, 32, 18), "Q5_0": (5, 32, 22),
             "Q6_K": (6, 16, 210), "Q3_K": (3, 16, 110)}


def _decode_blocks(kind: str, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blocks (n, bytes) -> unsigned codes (n, weights per block) int16 and scales (n, groups per
    block) float32, for w = scale * (code - 2**(bits-1)) (layouts as in gguf-py / ggml-quants.c)."""
    n = b.shape[0]
    if kind in ("Q8_0", "Q4_0", "Q5_0"):  # fp16 d, then the codes of 32 weights
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        body = b[:, 2:]
        if kind == "Q8_0":
            return body.view(np.int8).astype(np.int16) + 128, d
        if kind == "Q4_0":  # low nibbles are weights 0..15, high nibbles 16..31
            return np.concatenate([body & 0x0F, body >> 4], axis=-1).astype(np.int16), d
        qh = body[:, :4].copy().view(np.uint32)  # the 5th bit of each weight
        qs = body[:, 4:]
        j = np.arange(16, dtype=np.uint32)
        lo = (qs & 0x0F) | (((qh >> j) << 4) & 0x10).astype(np.uint8)
        hi = (qs >> 4) | ((qh >> (j + 12)) & 0x10).astype(np.uint8)
        return np.concatenate([lo, hi], axis=-1).astype(np.int16), d
    if kind == "Q6_K":  # ql 128, qh 64, int8 scales 16, fp16 d: scale d * sc per 16 weights
        ql, qh, sc, d = b[:, :128], b[:, 128:192], b[:, 192:208], b[:, 208:210]
        scale = d.copy().view(np.float16).astype(np.float32) * sc.view(np.int8).astype(np.float32)
        ql = (ql.reshape(n, -1, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0x0F
        qh = (qh.reshape(n, -1, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 0x03
        return (ql.reshape(n, -1, 32) | (qh.reshape(n, -1, 32) << 4)).reshape(n, 256).astype(np.int16), scale
    # Q3_K: hmask 32, qs 64, 12 bytes of 6-bit scales, fp16 d: scale d * (sc - 32) per 16 weights
    hmask, qs, sc, d = b[:, :32], b[:, 32:96], b[:, 96:108], b[:, 108:110]
    lo = (sc[:, :8].reshape(n, 1, 8) >> np.array([0, 4], dtype=np.uint8).reshape(1, 2, 1)).reshape(n, 16)
    hi = (sc[:, 8:].reshape(n, 1, 4) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 4, 1)).reshape(n, 16)
    sc = ((lo & 0x0F) | ((hi & 0x03) << 4)).astype(np.int16) - 32
    scale = d.copy().view(np.float16).astype(np.float32) * sc.astype(np.float32)
    ql = (qs.reshape(n, -1, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)).reshape(n, 16, 16) & 3
    high = (hmask.reshape(n, -1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)).reshape(n, 16, 16) & 1
    # value = ql - 4 * (1 - high): code = value + 4 = ql + 4 * high
    return (ql.astype(np.int16) + 4 * high.astype(np.int16)).reshape(n, 256), scale


def gguf_codes(path: Path, model) -> dict[str, QuantizedTensor]:
    """The Linear weights of a GGUF stored in a symmetric integer block type (Q8_0, Q4_0, Q5_0,
    Q6_K, Q3_K) as codes and scales per group (32, or 16 for k-quant sub-blocks) in HF row order;
    each checked to dequantize exactly as gguf-py does."""
    import gguf

    from lowbit.formats.int_affine import column_groups
    from lowbit.io.gguf_names import gguf_arch, gguf_names, qk_heads, unpermute_qk
    from lowbit.io.gguf_reader import open_gguf

    cfg = model.config
    r = open_gguf(path)
    by_name = {t.name: t for t in r.tensors}
    arch = gguf_arch(cfg.model_type)
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    linears = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    out = {}
    for hf, g in gguf_names(cfg.model_type, linears, cfg.num_hidden_layers).items():
        t = by_name.get(g)
        if t is None or t.tensor_type.name not in _GGML_INT:
            continue
        bits, group, size = _GGML_INT[t.tensor_type.name]
        data = np.asarray(t.data)
        rows = data.shape[0]
        q, scale = _decode_blocks(t.tensor_type.name, data.reshape(-1, size))
        q, scale = q.reshape(rows, -1), scale.reshape(rows, -1)
        heads = qk_heads(arch, g, cfg.num_attention_heads, n_kv)
        if heads:
            q, scale = unpermute_qk(q, heads), unpermute_qk(scale, heads)
        cols = q.shape[1]
        qt = QuantizedTensor(torch.from_numpy(np.ascontiguousarray(q).astype(np.uint8)),
                             torch.from_numpy(np.ascontiguousarray(scale)),
                             torch.full(scale.shape, float(2 ** (bits - 1))),
                             column_groups(cols, group), bits, group, True)
        ref = gguf.quants.dequantize(data, t.tensor_type).reshape(rows, cols)
        if heads:
            ref = unpermute_qk(ref, heads)
        if torch.equal(qt.dequantize(), torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))):
            out[hf[: -len(".weight")]] = qt
        else:  # not expected; re-quantizing is then the safe path
            log.warning("%s: %s codes do not reproduce gguf-py's dequantization; re-quantizing it", g,
                        t.tensor_type.name)
    return out


def _quantize_float(loaded, fmt: str, out: Path, bits, group_size, symmetric, overwrite) -> dict:
    from lowbit import api

    spec = QuantSpec(bits=DEFAULT_BITS if bits is None else bits,
                     group_size=DEFAULT_GROUP if group_size is None else group_size,
                     symmetric=True if symmetric is None else symmetric)
    summary = api.quantize(loaded, spec, out, overwrite=overwrite, format=fmt)
    n = summary["quantized_modules"]
    what = "float" if loaded.kind != "gguf" else "dequantized GGUF"
    return {"exact": 0, "scales_rounded": 0, "requantized": n, "kept_float": 0, "tensors": n,
            "requantize_reason": f"{what} weights to {spec.bits}-bit groups of {spec.group_size}",
            "scale_dtype": get_format(fmt).scale_dtype, "layout_changes": summary["layout_changes"]}


# ---- GGUF -----------------------------------------------------------------------------------

def _to_gguf(loaded, out: Path, gguf_type: str, overwrite: bool) -> dict:
    from gguf import GGMLQuantizationType as T

    from lowbit.io.gguf_mixes import plan_types
    from lowbit.io.gguf_writer import write_gguf

    model = loaded.model
    plan = plan_types(model, gguf_type)
    source = Path(loaded.source) if loaded.kind == "gguf" else None
    blocks = _copyable_blocks(source, model, plan) if source is not None else {}
    state = model.state_dict()
    exact = requantized = 0
    for hf, qtype in plan.items():
        if hf in blocks or qtype == T.F32:
            exact += 1
        elif qtype in (T.F16, T.BF16):
            dt = torch.float16 if qtype == T.F16 else torch.bfloat16
            W = state[hf]
            same = torch.equal(W.to(dt).float(), W.float())
            exact += same
            requantized += not same
        else:
            requantized += 1
    write_gguf(out, model, loaded.tokenizer, gguf_type, blocks=blocks, overwrite=overwrite, source_gguf=source)
    reason = f"{'GGUF blocks' if source else 'weights'} to the {gguf_type} mix"
    return {"exact": exact, "scales_rounded": 0, "requantized": requantized, "kept_float": 0,
            "tensors": len(plan), "requantize_reason": reason, "scale_dtype": None, "copied_blocks": len(blocks)}


def _copyable_blocks(path: Path, model, plan: dict) -> dict:
    """Source GGUF tensors whose block type the target mix keeps: their bytes, in HF row order."""
    from gguf import GGMLQuantizationType as T

    from lowbit.io.gguf_names import gguf_arch, gguf_names, qk_heads, unpermute_qk
    from lowbit.io.gguf_reader import open_gguf

    cfg = model.config
    r = open_gguf(path)
    by_name = {t.name: t for t in r.tensors}
    arch = gguf_arch(cfg.model_type)
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    blocks = {}
    for hf, g in gguf_names(cfg.model_type, plan, cfg.num_hidden_layers).items():
        t = by_name.get(g)
        if t is None or t.tensor_type != plan[hf] or plan[hf] in (T.F32, T.F16, T.BF16):
            continue
        data = np.asarray(t.data)
        heads = qk_heads(arch, g, cfg.num_attention_heads, n_kv)
        blocks[hf] = (np.ascontiguousarray(unpermute_qk(data, heads) if heads else data), t.tensor_type)
    return blocks
