"""AWQ "GEMM" checkpoints (AutoAWQ's WQLinear_GEMM), as transformers, GPTQModel and vLLM
load them. 4-bit only.

On disk, per quantized Linear `name` with weight (out, in), ng = in / G groups:
  name.qweight  int32 (in, out / 8)  codes q[o, i] of the transposed weight, 8 output columns
                per word; nibble k (bits 4k..4k+3) holds column 8c + AWQ_ORDER[k]
  name.qzeros   int32 (ng, out / 8)  zero points, same packing, the zero itself (no -1)
  name.scales   fp16 (ng, out)
  name.bias     kept as is
Dequantization: w[o, i] = scales[g, o] * (q - zero[g, o]), g = i // G; no g_idx, so groups
must divide the row and act-order must keep natural groups (static groups).
AWQ grids are asymmetric: a symmetric grid is written with zero point 8 (exact), and read
back as symmetric when every zero point of a tensor is 8.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from lowbit.errors import LowbitError
from lowbit.formats import QuantizedTensor, column_groups
from lowbit.io.gptq_v1 import anchored, module_settings, split_modules, stored_bits
from lowbit.spec import QuantSpec

log = logging.getLogger(__name__)

BITS = 4
PER_WORD = 8
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble k of a word holds column AWQ_ORDER[k]
KERNEL_GROUPS = (128, 64, 32, 16)  # group sizes AWQ kernels (GPTQModel, AutoAWQ) run


def fit_layout(name: str, spec: QuantSpec, shape: tuple) -> QuantSpec:
    """4 bits, output width a multiple of 8, groups that divide the row (the largest such
    size <= the requested one, preferring the kernels' 16/32/64/128), natural groups."""
    out, inp = shape
    if spec.bits != BITS:
        raise LowbitError(f"{name}: AWQ GEMM checkpoints hold 4-bit codes only, not {spec.bits}: "
                          "use --bits 4, or --format gptq / compressed-tensors")
    if out % PER_WORD:
        raise LowbitError(f"{name}: AWQ packs 8 output rows per word and this layer has {out}: "
                          "leave it in float (ignore it) or use --format gptq")
    g = spec.group_size
    if g == 0:
        g = -1  # no per-tensor grid in AWQ: one grid per output channel holds it
    elif g > 0 and inp % g:
        fits = [d for d in range(1, min(g, inp) + 1) if inp % d == 0]
        kernel = [d for d in fits if d in KERNEL_GROUPS]
        g = max(kernel) if kernel else max(fits)
    if g != spec.group_size:
        spec = replace(spec, group_size=g)
    args = spec.method_args
    if args.get("act_order") and not args.get("static_groups") and spec.group_size > 0:
        spec = replace(spec, method_args={**args, "static_groups": True})  # AWQ has no g_idx
    return spec


def _interleave(x: torch.Tensor) -> torch.Tensor:
    """(rows, out) -> columns permuted so that plain nibble packing gives AWQ's order."""
    rows, out = x.shape
    return x.reshape(rows, out // PER_WORD, PER_WORD)[:, :, list(AWQ_ORDER)].reshape(rows, out)


def _deinterleave(x: torch.Tensor) -> torch.Tensor:
    rows, out = x.shape
    inverse = [AWQ_ORDER.index(c) for c in range(PER_WORD)]
    return x.reshape(rows, out // PER_WORD, PER_WORD)[:, :, inverse].reshape(rows, out)


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """(rows, out) codes in [0, 16) -> (rows, out / 8) int32, column 8c + AWQ_ORDER[k] at bits 4k."""
    v = _interleave(codes.to(torch.int64)).reshape(codes.shape[0], -1, PER_WORD)
    words = (v << (torch.arange(PER_WORD) * BITS)).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _unpack_nibbles(words: torch.Tensor) -> torch.Tensor:
    w = words.to(torch.int64) & 0xFFFFFFFF
    v = (w[..., None] >> (torch.arange(PER_WORD) * BITS)) & 0xF
    return _deinterleave(v.reshape(words.shape[0], -1)).to(torch.uint8)


def _layout_key(qt: QuantizedTensor) -> int:
    return -1 if qt.group_size == 0 else qt.group_size


def quantization_config(tensors: dict[str, QuantizedTensor], ignore: list[str]) -> dict:
    groups = {name: _layout_key(qt) for name, qt in tensors.items()}
    counts = Counter(groups.values())
    group = counts.most_common(1)[0][0] if counts else 128
    cfg = {"quant_method": "awq", "version": "gemm", "zero_point": True,
           "bits": BITS, "group_size": group, "w_bit": BITS, "q_group_size": group,
           # lm_head is never converted by AWQ loaders; transformers 4.57 refuses any other
           # entry here unless autoawq >= 0.1.8 is installed
           "modules_to_not_convert": sorted(n for n in ignore if n != "lm_head") or None}
    # a different group size on some modules (rows it does not divide): GPTQModel's map
    dynamic = {"+:" + anchored(n): {"group_size": g} for n, g in sorted(groups.items()) if g != group}
    # GPTQModel reads float Linears from its "dynamic" map, transformers from modules_to_not_convert
    dynamic.update({"-:" + anchored(n): {} for n in sorted(ignore) if n != "lm_head"})
    if dynamic:
        cfg["dynamic"] = dynamic
    return cfg


def pack_tensor(name: str, qt: QuantizedTensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out, inp = qt.shape
    if qt.bits != BITS or out % PER_WORD:
        raise ValueError(f"{name}: AWQ GEMM holds 4-bit codes with out % 8 == 0 (got {qt.bits} bits, out {out})")
    if qt.act_order or (qt.group_size > 0 and inp % qt.group_size):
        raise ValueError(f"{name}: AWQ has no g_idx and no partial groups; quantize with fit_layout")
    scale, zero = qt.scale, qt.zero
    if scale.shape[0] == 1:  # per tensor -> per channel with equal rows
        scale, zero = scale.expand(out, -1), zero.expand(out, -1)
    scales = scale.t().to(torch.float16).contiguous()
    if not torch.isfinite(scales).all():
        raise ValueError(f"{name}: a scale overflows float16")
    return {f"{name}.qweight": _pack_nibbles(qt.q.t()),
            f"{name}.qzeros": _pack_nibbles(zero.round().to(torch.int64).t()),
            f"{name}.scales": scales}


def read_tensors(model_dir: Path, qconfig: dict) -> tuple[dict[str, QuantizedTensor], dict[str, torch.Tensor]]:
    base = {"bits": qconfig.get("bits", qconfig.get("w_bit", BITS)),
            "group_size": qconfig.get("group_size", qconfig.get("q_group_size", 128)),
            "dynamic": qconfig.get("dynamic")}
    if base["bits"] != BITS:
        raise ValueError(f"AWQ GEMM checkpoint with {base['bits']} bits: lowbit reads 4-bit AWQ only")
    modules, plain = split_modules(model_dir, ("qweight", "qzeros", "scales"))
    tensors = {}
    for mod, t in modules.items():
        settings = module_settings(mod, base)
        if settings is None or len(t) != 3:
            raise ValueError(f"{mod}: incomplete AWQ tensors (qweight, qzeros, scales)")
        group = settings["group_size"]
        if not isinstance(group, int):
            raise ValueError(f"{mod}: quantization_config needs an integer group_size")
        if any(v.ndim != 2 for v in t.values()) or t["qweight"].shape[1] != t["qzeros"].shape[1] \
                or t["qweight"].shape[1] * PER_WORD != t["scales"].shape[1] \
                or t["qzeros"].shape[0] != t["scales"].shape[0]:
            raise ValueError(f"{mod}: qweight, qzeros and scales shapes do not agree "
                             f"{[tuple(v.shape) for v in t.values()]}")
        q = _unpack_nibbles(t["qweight"]).t().contiguous()  # (out, in)
        out, inp = q.shape
        zero = _unpack_nibbles(t["qzeros"]).t().float().contiguous()  # (out, ng)
        scale = t["scales"].float().t().contiguous()
        if scale.shape[1] != (inp // group if group > 0 else 1):
            raise ValueError(f"{mod}: {scale.shape[1]} groups of scales for {inp} columns in groups of {group}")
        symmetric = bool((zero == 2 ** (BITS - 1)).all())
        tensors[mod] = QuantizedTensor(q, scale, zero, column_groups(inp, group), BITS, group, symmetric)
    return tensors, plain


def _detect(qconfig: dict) -> bool:
    return qconfig.get("quant_method") == "awq" and str(qconfig.get("version", "gemm")).lower() == "gemm"


from lowbit.io.format_registry import CheckpointFormat, register_format  # noqa: E402

register_format(CheckpointFormat("awq", fit_layout, pack_tensor, quantization_config, _detect, read_tensors,
                                 scale_dtype="float16", bits=(4,), stored_bits=stored_bits, title="AWQ GEMM"))
