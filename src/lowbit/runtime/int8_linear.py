"""Int8 Linears computed with a real int8 x int8 GEMM (torch._int_mm: int32 accumulation).

W8A8 (SmoothQuant; compressed-tensors int-quantized with dynamic per-token input_activations):
each input row (token) is rounded to int8 with its own scale amax / 127, multiplied by the int8
weight codes, and the int32 result scaled back by (row scale x output channel scale).

LLM.int8() (Dettmers et al. 2022, as bitsandbytes runs it): input feature columns holding any
value with |x| >= threshold (6.0) in this forward pass are outliers; they are multiplied in
float by the dequantized weight columns, the rest as W8A8 above. The weight codes are the same
int8 per output row (absmax / 127) in both.
"""
from __future__ import annotations

import torch

from lowbit.runtime.packed import PackedLinear, register_kernel

QMAX = 127
THRESHOLD = 6.0  # bitsandbytes' llm_int8_threshold
# the CPU weight-only kernel's fast path is bf16 (float32 inputs take a scalar loop, 7x slower;
# kept for exact=True)
WEIGHT_ONLY_DTYPE = torch.bfloat16


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, float32 (rows, 1) scales) of x (rows, in), each row by its absmax / 127,
    ties to even; an all-zero row gets scale 1."""
    x = x.float()
    amax = x.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    return torch.round(x / scale).clamp(-QMAX, QMAX).to(torch.int8), scale


def round_rows(x: torch.Tensor) -> torch.Tensor:
    """x as the int8 path sees it (per-token int8, decoded): the input rounding of W8A8."""
    flat = x.reshape(-1, x.shape[-1])
    q, s = quantize_rows(flat)
    return (q.float() * s).reshape(x.shape).to(x.dtype)


def outlier_columns(x2d: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    return (x2d.abs() >= threshold).any(dim=0)


def round_rows_llm_int8(x: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """x as LLM.int8() sees it: outlier columns exact, the rest per-token int8."""
    flat = x.reshape(-1, x.shape[-1]).float()
    outl = outlier_columns(flat, threshold)
    inl = flat.masked_fill(outl, 0.0)
    q, s = quantize_rows(inl)
    out = torch.where(outl, flat, q.float() * s)
    return out.reshape(x.shape).to(x.dtype)


def int_matmul(xq: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    """int32 (rows, out) = xq (rows, in) int8 @ wq (out, in) int8 ^T, exactly."""
    return torch._int_mm(xq.contiguous(), wq.t())


def w8a8(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., in) float; wq (out, in) int8; w_scale (out,) float32."""
    return _int8_linear(x, wq, w_scale, bias, None)


def llm_int8(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
             threshold: float = THRESHOLD) -> torch.Tensor:
    return _int8_linear(x, wq, w_scale, bias, threshold)


def _int8_linear(x, wq, w_scale, bias, threshold: float | None) -> torch.Tensor:
    """W8A8, or with a threshold LLM.int8(): outlier columns in float, the rest as W8A8."""
    flat = x.reshape(-1, x.shape[-1]).float()
    outl = outlier_columns(flat, threshold) if threshold is not None else None
    xq, xs = quantize_rows(flat if outl is None else flat.masked_fill(outl, 0.0))
    y = int_matmul(xq, wq).float() * xs * w_scale
    if outl is not None and bool(outl.any()):
        cols = outl.nonzero().squeeze(1)
        y = y + flat[:, cols] @ (wq[:, cols].float() * w_scale[:, None]).t()
    if bias is not None:
        y = y + bias.float()
    return y.reshape(*x.shape[:-1], wq.shape[0]).to(x.dtype)


def _row_scales(qt) -> torch.Tensor:
    out = qt.shape[0]
    return qt.scale.float().reshape(-1).expand(out) if qt.scale.numel() == 1 else qt.scale.float().reshape(out)


def _int8_per_row(qt) -> bool:
    return qt.kind == "int" and qt.bits == 8 and qt.group_size <= 0 and qt.symmetric  # per channel or tensor


@register_kernel
class Int8WeightLinear(PackedLinear):
    """8-bit symmetric weights per output channel (or tensor), float inputs: torch's int8
    weight-only kernel (aten._weight_int8pack_mm), which reads one byte per weight."""
    kernel = "int8 weight-only"

    @classmethod
    def accepts(cls, qt) -> bool:
        return _int8_per_row(qt) and getattr(qt, "act", "none") == "none"

    @classmethod
    def from_qtensor(cls, qt, bias, dtype, exact=False):
        out, inp = qt.shape
        m = cls(out, inp, bias, dtype)
        m.compute = torch.float32 if exact else WEIGHT_ONLY_DTYPE
        m.register_buffer("weight_int8", qt.signed_codes().contiguous())
        m.register_buffer("scales", _row_scales(qt).to(m.compute).contiguous())
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compute(x, lambda x2: torch._weight_int8pack_mm(x2, self.weight_int8, self.scales))


@register_kernel
class W8A8Linear(PackedLinear):
    """W8A8 (per-token int8 inputs) and LLM.int8() (outlier columns in float): int8 x int8 GEMM
    (torch._int_mm) as above."""
    kernel = "int8 x int8"

    @classmethod
    def accepts(cls, qt) -> bool:
        return _int8_per_row(qt) and getattr(qt, "act", "none") in ("int8-token", "llm-int8")

    @classmethod
    def from_qtensor(cls, qt, bias, dtype, exact=False):
        out, inp = qt.shape
        m = cls(out, inp, bias, dtype)
        m.threshold = THRESHOLD if qt.act == "llm-int8" else None
        m.register_buffer("weight_int8", qt.signed_codes().contiguous())
        m.register_buffer("scales", _row_scales(qt).contiguous())
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _int8_linear(x, self.weight_int8, self.scales, self.bias, self.threshold)
