"""What llama.cpp's CPU backend does to a Linear's input before the dot product with a weight
of a given GGML type (ggml-cpu's vec_dot_type): the input row is itself quantized.

- Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 weights: inputs in Q8_0 (Q8_1 holds the same values plus a
  sum) -- blocks of 32, d = amax / 127 stored as fp16, codes round(x / d) computed with the
  unrounded d.
- k-quants: inputs in Q8_K -- blocks of 256, iscale = -127 / max (max: the value of largest
  magnitude, with its sign), codes min(127, nearest(iscale * x)), d = 1 / iscale in float32.
- F16 / BF16 weights: inputs rounded to that float type; F32: untouched.

This rounding is part of the function a GGUF file computes in llama.cpp (on the default model
it alone costs a Q8_0 file KLD 0.0031 against the float model), so methods that choose a
file's weights can measure it (transforms/smooth.py does).
"""
from __future__ import annotations

import torch
from gguf import GGMLQuantizationType as T

_Q8_0_INPUT = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}
_Q8_K_INPUT = {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS,
               T.IQ3_S, T.IQ4_XS, T.IQ1_S, T.IQ1_M}


def _rows(x: torch.Tensor, block: int) -> torch.Tensor:
    if x.shape[-1] % block:
        raise ValueError(f"input width {x.shape[-1]} is not a multiple of the {block}-wide activation blocks")
    return x.detach().to(torch.float32).reshape(-1, block)


def round_q8_0(x: torch.Tensor) -> torch.Tensor:
    """x as llama.cpp's quantize_row_q8_0 leaves it (dequantized), same shape and dtype."""
    xb = _rows(x, 32)
    d = xb.abs().amax(1, keepdim=True) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = (xb * inv).round_()  # half to even, as the AVX2 path rounds; in place: one copy of x
    return q.mul_(d.half().float()).reshape(x.shape).to(x.dtype)


def round_q8_k(x: torch.Tensor) -> torch.Tensor:
    """x as llama.cpp's quantize_row_q8_K leaves it (dequantized), same shape and dtype."""
    xb = _rows(x, 256)
    idx = xb.abs().argmax(1, keepdim=True)
    mx = xb.gather(1, idx)  # signed value of largest magnitude
    iscale = torch.where(mx != 0, -127 / mx, torch.zeros_like(mx))
    q = (iscale * xb).round_().clamp_(max=127)  # in place: one copy of x, not four
    d = torch.where(mx != 0, 1 / iscale, torch.zeros_like(mx))
    return q.mul_(d).reshape(x.shape).to(x.dtype)


def input_rounding(weight_type: T):
    """The function llama.cpp applies to inputs of a weight of this type (None: none)."""
    if weight_type in _Q8_0_INPUT:
        return round_q8_0
    if weight_type in _Q8_K_INPUT:
        return round_q8_k
    if weight_type == T.F16:
        return lambda x: x.to(torch.float16).to(x.dtype)
    if weight_type == T.BF16:
        return lambda x: x.to(torch.bfloat16).to(x.dtype)
    return None
