"""MXFP4 (OCP microscaling FP4): e2m1 values in blocks of 32 consecutive weights of a row, each
block with one shared power-of-two scale stored as an e8m0 byte (scale = 2 ** (e - 127)).
Bits per weight: 4 + 8/32 = 4.25.

  e = floor(log2(amax(block))) - 2 + 127     (2 = floor(log2(6)): the block's largest weight
                                               lands in [4, 8), rounded into e2m1's range)
  value = e2m1(code) * 2 ** (e - 127)

Two producers round differently, and each file is written the way its loader's own
quantizer would write it:
- "ocp" (compressed-tensors' mxfp4-pack-quantized, vLLM): amax is first rounded to a power of
  two upwards when its mantissa is 0.75 or more (round_to_power_2 with e2m1's one mantissa bit),
  codes are nearest with ties to even, clamped to +-6, and a negative that rounds to zero keeps
  its sign bit (code 8), as its cast_to_fp4 and packer do.
- "ggml" (llama.cpp's GGUF type MXFP4, 39): e from amax as it is, codes nearest with ties to
  the smaller magnitude and zero as code 0 (quantize_row_mxfp4_ref's first-minimum search).
Codes are the e2m1 index (0..7: 0, 0.5, 1, 1.5, 2, 3, 4, 6) with the sign in bit 3 in both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.formats.e2m1 import E2M1, E2M1BlockGrid, E2M1Blocks, round_e2m1
from lowbit.formats.grid import register_grid
from lowbit.formats.qtensor import QTensor, register_kind

BLOCK = 32
E8M0_BIAS = 127
STYLES = ("ocp", "ggml")


def block_amax(W: torch.Tensor) -> torch.Tensor:
    out, inp = W.shape
    return W.detach().float().abs().reshape(out, inp // BLOCK, BLOCK).amax(dim=2)


def _round_up_pow2(a: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' round_to_power_2 for e2m1 on float32: add a quarter of the exponent's
    step to the mantissa and drop the mantissa (1.75 * 2**k and above become 2**(k+1))."""
    bits = a.contiguous().view(torch.int32)
    return ((bits + (1 << 21)) & ~((1 << 23) - 1)).view(torch.float32)


def exponents(W: torch.Tensor, style: str = "ocp") -> torch.Tensor:
    """uint8 (out, in / 32) e8m0 bytes; an all-zero block gets 0 (its codes are all 0)."""
    a = block_amax(W)
    if style == "ocp":
        a = _round_up_pow2(a)
    with torch.no_grad():
        e = torch.floor(torch.log2(a)) - 2 + E8M0_BIAS
    return torch.where(a > 0, e.clamp(0, 254), torch.zeros_like(e)).to(torch.uint8)


def scale_of(e: torch.Tensor) -> torch.Tensor:
    """float32 2 ** (e - 127) (exact: a power of two, subnormal below e = 1)."""
    return torch.ldexp(torch.ones(e.shape), e.to(torch.int32) - E8M0_BIAS)


def round_ggml(x: torch.Tensor) -> torch.Tensor:
    """llama.cpp's nearest e2m1 code of x (x already divided by the block scale): ties to the
    smaller magnitude, anything rounding to zero is +0."""
    mags = torch.tensor(E2M1, dtype=torch.float32)
    idx = torch.bucketize(x.float().abs(), (mags[:-1] + mags[1:]) / 2, right=False)
    return (idx + 8 * ((x < 0) & (idx > 0))).to(torch.uint8)


ROUNDERS = {"ocp": round_e2m1, "ggml": round_ggml}


@register_kind
@dataclass
class MXFP4Tensor(E2M1Blocks, QTensor):
    """codes (out, in) uint8 0..15; exponent (out, in / 32) uint8 e8m0."""
    kind = "mxfp4"
    block = BLOCK
    codes: torch.Tensor
    exponent: torch.Tensor

    def block_scale(self) -> torch.Tensor:
        return scale_of(self.exponent)

    def stored_bytes(self) -> int:
        return self.codes.numel() // 2 + self.exponent.numel()

    def state(self):
        return {"codes": self.codes, "exponent": self.exponent}

    @classmethod
    def from_state(cls, state, header):
        return cls(state["codes"], state["exponent"])

    def describe(self):
        return "mxfp4"


@dataclass
class MXFP4Fit:
    exponent: torch.Tensor   # uint8 (out, in / 32)
    per_block: torch.Tensor  # float32 (out, in / 32): 2 ** (e - 127)


class MXFP4Grid(E2M1BlockGrid):
    """Blocks of 32 with a power-of-two scale each, fitted from the whole matrix up front (GPTQ's
    static groups: measured best for 32-weight blocks on llama.cpp's grids, docs/design/gguf_gptq.md)."""
    kind = "mxfp4"
    name = "MXFP4"
    block = BLOCK
    rows_independent = True

    def __init__(self, style: str = "ocp"):
        if style not in STYLES:
            raise ValueError(f"MXFP4 style must be one of {STYLES}, got {style!r}")
        self.style = style

    def rounder(self, x):
        return ROUNDERS[self.style](x)

    def fit(self, W, importance=None):
        self.check(W)
        e = exponents(W, self.style)
        return MXFP4Fit(e, scale_of(e))

    def encode(self, fitted, codes, reordered=False):
        self.check_order(reordered)
        return MXFP4Tensor(codes.to(torch.uint8), fitted.exponent)

    def join_rows(self, parts):
        return MXFP4Tensor(torch.cat([p.codes for p in parts]), torch.cat([p.exponent for p in parts]))

    def describe(self):
        return "mxfp4" if self.style == "ocp" else "MXFP4"


@register_grid("mxfp4")
def _mxfp4_grid(spec, auto_clip):
    return MXFP4Grid("ocp")
