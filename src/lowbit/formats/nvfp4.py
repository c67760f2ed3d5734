"""NVFP4 (microscaling FP4, as NVIDIA Blackwell runs it and compressed-tensors stores it):
e2m1 values in blocks of 16 consecutive weights of a row, each block with a float8 e4m3 scale,
and one float32 global scale per tensor that brings the block scales into e4m3's range.

  global = 448 * 6 / amax(W)                 (448: e4m3's largest value, 6: e2m1's)
  block scale s = e4m3(global * amax(block) / 6)
  value = e2m1(code) * s / global,  code = nearest e2m1 of w / (s / global), ties to even
The e2m1 values are 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives; a code is the value's index
with the sign in bit 3 (compressed-tensors' packing: two codes per byte, the first in the low
nibble). Bits per weight: 4 + 8/16 + 32/N for a matrix of N weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.formats.fp8 import fp8_max
from lowbit.formats.e2m1 import E2M1BlockGrid, E2M1Blocks
from lowbit.formats.grid import register_grid
from lowbit.formats.qtensor import QTensor, register_kind

BLOCK = 16


@register_kind
@dataclass
class NVFP4Tensor(E2M1Blocks, QTensor):
    """codes (out, in) uint8 0..15; scale float8_e4m3fn (out, in / 16); global_scale float32 (1,)."""
    kind = "nvfp4"
    block = BLOCK
    codes: torch.Tensor
    scale: torch.Tensor
    global_scale: torch.Tensor

    def block_scale(self) -> torch.Tensor:
        """float32 (out, in / 16): the scale each block decodes with."""
        return self.scale.float() / self.global_scale.float()

    def stored_bytes(self) -> int:
        return self.codes.numel() // 2 + self.scale.numel() + 4

    def state(self):
        return {"codes": self.codes, "scale": self.scale, "global_scale": self.global_scale}

    @classmethod
    def from_state(cls, state, header):
        return cls(state["codes"], state["scale"], state["global_scale"].float())

    def describe(self):
        return "nvfp4"


def global_scale_of(W: torch.Tensor) -> torch.Tensor:
    amax = W.detach().float().abs().amax()
    g = (fp8_max("e4m3") * 6.0) / amax
    return torch.nan_to_num(g, nan=1.0, posinf=1.0, neginf=1.0).reshape(1)


def block_scales(W: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn (out, in / 16); an all-zero block gets e4m3's epsilon (its codes are 0)."""
    out, inp = W.shape
    amax = W.detach().float().abs().reshape(out, inp // BLOCK, BLOCK).amax(dim=2)
    s = (global_scale * (amax / 6.0)).clamp(-fp8_max("e4m3"), fp8_max("e4m3")).to(torch.float8_e4m3fn)
    eps = torch.tensor(torch.finfo(torch.float8_e4m3fn).eps).to(torch.float8_e4m3fn)
    return torch.where(s.float() == 0, eps, s)


@dataclass
class NVFP4Fit:
    scale: torch.Tensor         # float8 (out, in / 16)
    global_scale: torch.Tensor  # float32 (1,)
    per_block: torch.Tensor     # float32 (out, in / 16): scale / global


class NVFP4Grid(E2M1BlockGrid):
    """The global scale comes from the whole matrix: fitted once up front."""
    kind = "nvfp4"
    name = "NVFP4"
    block = BLOCK

    def fit(self, W, importance=None):
        self.check(W)
        g = global_scale_of(W)
        s = block_scales(W, g)
        return NVFP4Fit(s, g, s.float() / g)

    def encode(self, fitted, codes, reordered=False):
        self.check_order(reordered)
        return NVFP4Tensor(codes.to(torch.uint8), fitted.scale, fitted.global_scale)

    def describe(self):
        return "nvfp4"


@register_grid("nvfp4")
def _nvfp4_grid(spec, auto_clip):
    return NVFP4Grid()
