"""GPTQ "v1" checkpoints (checkpoint_format "gptq"), as AutoGPTQ wrote them and GPTQModel,
optimum/transformers and vLLM load them.

On disk, per quantized Linear `name` with weight (out, in), b bits, ng = ceil(in / G) groups:
  name.qweight  int32 (ceil(in * b / 32), out)  codes packed down the input axis: each column
                is a little-endian bit stream, code i at bit i * b. For b = 2, 4, 8 that is
                32 / b codes per word; for b = 3 a block of 32 rows fills 3 words with codes
                10 and 21 split across word boundaries (the AutoGPTQ/GPTQModel interleave)
  name.qzeros   int32 (ng, ceil(out * b / 32))  zero points, same bit stream along the
                output axis, stored as (zero - 1) mod 2**b: the v1 off-by-one
  name.scales   fp16 (ng, out)
  name.g_idx    int32 (in,)  group of every input column (column // G, or act-order's)
  name.bias     kept as is
Dequantization: w[o, i] = scales[g, o] * (q[i, o] - (stored_zero[g, o] + 1)), g = g_idx[i].

One bits / group size / sym for the whole model in quantization_config; modules that differ
(per-module overrides) and Linears left in float go into GPTQModel's "dynamic" map.

Also registered: "gptq-v2" (checkpoint_format "gptq_v2"), the same files with the zero point
itself in qzeros. GPTQModel refuses asymmetric v1 files unless GPTQModel >= 0.9 wrote them
(AutoGPTQ's asymmetric v1 zeros were corrupt); it loads v2 files from any producer.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open

from lowbit.errors import LowbitError
from lowbit.formats.packing import pack_stream, unpack_stream
from lowbit.formats import QuantizedTensor, column_groups
from lowbit.io.file_checks import check_safetensors, safetensors_shapes, stored_nbytes
from lowbit.spec import QuantSpec

log = logging.getLogger(__name__)

BITS = (2, 3, 4, 8)  # what transformers' GPTQConfig and the v1 kernels accept
WORD = 32
SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")
# settings of the quantization run, not of the layout: the writer does not see the spec, so
# it writes lowbit's GPTQ defaults; the spec actually used is in lowbit.json
RUN_DEFAULTS = {"damp_percent": 0.01, "true_sequential": True, "static_groups": True}


# ---- layout ---------------------------------------------------------------------------------

def fit_layout(name: str, spec: QuantSpec, shape: tuple) -> QuantSpec:
    """GPTQ v1 holds any group size (the last group of a row may be partial: ng = ceil(in/G))
    and act-order's per-column g_idx. It has no per-tensor grid: that becomes per channel."""
    if spec.bits not in BITS:
        raise LowbitError(f"{name}: GPTQ checkpoints hold 2, 3, 4 or 8-bit codes, not {spec.bits}: "
                          "choose one of those bit widths or --format compressed-tensors")
    if spec.group_size == 0:
        spec = replace(spec, group_size=-1)
    return spec


def _layout_key(qt: QuantizedTensor) -> tuple:
    group = -1 if qt.group_size == 0 else qt.group_size
    return qt.bits, group, qt.symmetric, qt.act_order


def anchored(name: str) -> str:
    return "^" + re.escape(name) + "$"


def quantization_config(tensors: dict[str, QuantizedTensor], ignore: list[str],
                        checkpoint_format: str = "gptq") -> dict:
    from lowbit import __version__
    keys = {name: _layout_key(qt) for name, qt in tensors.items()}
    counts = Counter(keys.values())
    base = counts.most_common(1)[0][0] if counts else (4, 128, True, False)
    bits, group, sym, desc_act = base
    dynamic: dict[str, dict] = {}
    for name in sorted(keys):
        if keys[name] != base:
            b, g, s, a = keys[name]
            dynamic["+:" + anchored(name)] = {"bits": b, "group_size": g, "sym": s, "desc_act": a}
    for name in sorted(ignore):  # Linears left in float: loaders must not expect qweight there
        if name != "lm_head":
            dynamic["-:" + anchored(name)] = {}
    cfg = {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": desc_act,
           "sym": sym, **RUN_DEFAULTS, "checkpoint_format": checkpoint_format, "format": checkpoint_format,
           "pack_dtype": "int32", "lm_head": "lm_head" in tensors,
           "meta": {"quantizer": [f"lowbit:{__version__}"], **RUN_DEFAULTS}}
    if dynamic:
        cfg["dynamic"] = dynamic
    return cfg


# ---- write / read ---------------------------------------------------------------------------

def pack_tensor(name: str, qt: QuantizedTensor, dtype: torch.dtype, zero_offset: int = 1) -> dict[str, torch.Tensor]:
    """zero_offset: what qzeros stores less than the zero point (1 in v1, 0 in v2)."""
    if qt.bits not in BITS:
        raise ValueError(f"{name}: GPTQ v1 holds 2, 3, 4 or 8-bit codes, not {qt.bits}")
    out, inp = qt.shape
    scale, zero = qt.scale, qt.zero
    if scale.shape[0] == 1:  # a per-tensor grid is a per-channel grid with equal rows
        scale, zero = scale.expand(out, -1), zero.expand(out, -1)
    zero = zero.round().to(torch.int64)
    if zero_offset and not qt.symmetric and bool((zero == 0).any()):
        # (0 - 1) mod 2**b is all ones: exact for field-wise readers (AutoGPTQ, GPTQModel's
        # 3-bit path, lowbit); GPTQModel's 2/4/8-bit loader adds 1 per word and carries it
        # into the neighbouring zero point, as for its own asymmetric v1 files
        log.warning("%s: %d asymmetric groups have zero point 0, which GPTQ v1 stores as -1",
                    name, int((zero == 0).sum()))
    scales = scale.t().to(torch.float16).contiguous()  # (ng, out)
    if not torch.isfinite(scales).all():
        raise ValueError(f"{name}: a scale overflows float16")
    return {
        f"{name}.qweight": pack_stream(qt.q.t(), qt.bits, dim=0),
        f"{name}.qzeros": pack_stream(((zero - zero_offset) % 2**qt.bits).t(), qt.bits, dim=1),
        f"{name}.scales": scales,
        f"{name}.g_idx": qt.g_idx.to(torch.int32).contiguous(),
    }


def module_settings(name: str, qconfig: dict) -> dict | None:
    """bits / group_size / sym / desc_act of one module after GPTQModel's "dynamic" map
    (first matching pattern wins; "-:" means left in float -> None)."""
    settings = {k: qconfig.get(k) for k in ("bits", "group_size", "sym", "desc_act")}
    for pattern, override in (qconfig.get("dynamic") or {}).items():
        negative = pattern.startswith("-:")
        regex = pattern[2:] if pattern[:2] in ("-:", "+:") else pattern
        if re.match(regex, name):
            return None if negative else {**settings, **override}
    return settings


def unpack_tensor(name: str, t: dict[str, torch.Tensor], settings: dict, zero_offset: int) -> QuantizedTensor:
    if not all(isinstance(settings.get(k), int) for k in ("bits", "group_size")):
        raise ValueError(f"{name}: quantization_config needs integer bits and group_size")
    bits, group = settings["bits"], settings["group_size"]
    if bits not in BITS:
        raise ValueError(f"{name}: GPTQ with {bits} bits: lowbit reads 2, 3, 4 and 8")
    scales = t["scales"].float()  # (ng, out)
    if scales.ndim != 2 or t["qweight"].ndim != 2 or t["qzeros"].ndim != 2:
        raise ValueError(f"{name}: qweight, qzeros and scales must be 2-D")
    out = scales.shape[1]
    inp = t["g_idx"].numel() if "g_idx" in t else t["qweight"].shape[0] * WORD // bits
    if t["qweight"].dtype != torch.int32 or t["qzeros"].dtype != torch.int32:
        raise ValueError(f"{name}: qweight and qzeros must be int32 words")
    if t["qweight"].shape[1] != out or t["qzeros"].shape[0] != scales.shape[0]:
        raise ValueError(f"{name}: qweight {tuple(t['qweight'].shape)}, qzeros {tuple(t['qzeros'].shape)} "
                         f"and scales {tuple(scales.shape)} do not agree")
    q = unpack_stream(t["qweight"], bits, inp, dim=0).t().contiguous()  # (out, in)
    stored = unpack_stream(t["qzeros"], bits, out, dim=1).to(torch.int64)
    zero = ((stored + zero_offset) % 2**bits).t().float().contiguous()  # (out, ng)
    natural = column_groups(inp, group)
    g_idx = t["g_idx"].long() if "g_idx" in t else natural
    if g_idx.numel() and (int(g_idx.min()) < 0 or int(g_idx.max()) >= scales.shape[0]):
        raise ValueError(f"{name}: g_idx points outside the {scales.shape[0]} groups")
    act_order = not torch.equal(g_idx, natural)
    half = 2 ** (bits - 1)
    symmetric = bool(settings.get("sym", True)) and bool((zero == half).all())
    if group > 0 and scales.shape[0] != -(-inp // group):
        raise ValueError(f"{name}: {scales.shape[0]} groups of scales for {inp} columns in groups of {group}")
    return QuantizedTensor(q, scales.t().contiguous(), zero, g_idx, bits, group, symmetric, act_order)


def split_modules(model_dir: Path, suffixes: tuple) -> tuple[dict[str, dict], dict[str, torch.Tensor]]:
    """Every tensor of the directory's safetensors: per-module packed parts, and the rest."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    plain: dict[str, torch.Tensor] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        check_safetensors(f)  # bounds-checked before the library parses it
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                mod, _, suffix = k.rpartition(".")
                if suffix in suffixes:
                    modules.setdefault(mod, {})[suffix] = fh.get_tensor(k)
                else:
                    plain[k] = fh.get_tensor(k)
    return modules, plain


def read_tensors(model_dir: Path, qconfig: dict) -> tuple[dict[str, QuantizedTensor], dict[str, torch.Tensor]]:
    # v2 (GPTQModel's internal format) stores the zero point itself
    offset = 0 if _checkpoint_format(qconfig) == "gptq_v2" else 1
    if str(qconfig.get("pack_dtype", "int32")) != "int32":
        raise ValueError(f"GPTQ packed in {qconfig['pack_dtype']} words: lowbit reads int32 packing only")
    modules, plain = split_modules(model_dir, SUFFIXES)
    tensors = {}
    for mod, t in modules.items():
        settings = module_settings(mod, qconfig)
        if settings is None or not {"qweight", "qzeros", "scales"} <= set(t):
            raise ValueError(f"{mod}: incomplete GPTQ tensors or excluded by quantization_config")
        tensors[mod] = unpack_tensor(mod, t, settings, offset)
    return tensors, plain


def _checkpoint_format(qconfig: dict) -> str:
    return str(qconfig.get("checkpoint_format") or qconfig.get("format") or "gptq").lower()


def _detect(qconfig: dict) -> bool:
    return qconfig.get("quant_method") == "gptq" and _checkpoint_format(qconfig) == "gptq"


def _detect_v2(qconfig: dict) -> bool:
    return qconfig.get("quant_method") == "gptq" and _checkpoint_format(qconfig) == "gptq_v2"


def _pack_v2(name: str, qt: QuantizedTensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return pack_tensor(name, qt, dtype, zero_offset=0)


def _config_v2(tensors: dict[str, QuantizedTensor], ignore: list[str]) -> dict:
    return quantization_config(tensors, ignore, checkpoint_format="gptq_v2")


def stored_bits(path: Path, qconfig: dict) -> float | None:
    """Bits per weight of the quantized Linears (GPTQ v1/v2 and AWQ GEMM), from the stored tensors."""
    method = str(qconfig.get("quant_method", "")).lower()

    suffixes = ("qweight", "qzeros", "scales", "g_idx")
    modules: dict[str, dict[str, tuple]] = {}
    for f in sorted(path.glob("*.safetensors")):
        for k, v in safetensors_shapes(f).items():
            mod, _, suffix = k.rpartition(".")
            if suffix in suffixes:
                modules.setdefault(mod, {})[suffix] = v
    stored = weights = 0
    for mod, t in modules.items():
        if "qweight" not in t or "scales" not in t:
            continue
        out = t["scales"][1][1]
        if method == "awq":  # qweight (in, out / 8)
            inp = t["qweight"][1][0]
        elif "g_idx" in t:
            inp = t["g_idx"][1][0]
        else:  # qweight (ceil(in * bits / 32), out): a whole number of words
            settings = module_settings(mod, qconfig) or {}
            inp = t["qweight"][1][0] * WORD // int(settings.get("bits") or 4)
        weights += out * inp
        stored += 8 * sum(stored_nbytes(*v) for v in t.values())
    return stored / weights if weights else None


from lowbit.io.format_registry import CheckpointFormat, register_format  # noqa: E402

register_format(CheckpointFormat("gptq", fit_layout, pack_tensor, quantization_config, _detect, read_tensors,
                                 scale_dtype="float16", bits=BITS, g_idx=True, stored_bits=stored_bits))
register_format(CheckpointFormat("gptq-v2", fit_layout, _pack_v2, _config_v2, _detect_v2, read_tensors,
                                 scale_dtype="float16", bits=BITS, g_idx=True, stored_bits=stored_bits))
