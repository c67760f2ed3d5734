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

from lowbit.errors import LowbitError
from lowbit.formats.fp8 import fp8_max
from lowbit.formats.grid import Grid, register_grid
from lowbit.formats.qtensor import QTensor, register_kind

E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
BLOCK = 16


def e2m1_values() -> torch.Tensor:
    """The 16 code values: indices 0..7 positive, 8..15 the same magnitudes negative."""
    mags = torch.tensor(E2M1, dtype=torch.float32)
    return torch.cat([mags, -mags])


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """uint8 codes of the nearest e2m1 value of x (clamped to +-6); a tie goes to the even
    index (to 0, 1, 2 or 4: an even mantissa), as compressed-tensors' cast_to_fp4 rounds."""
    mags = torch.tensor(E2M1, dtype=torch.float32)
    mids = (mags[:-1] + mags[1:]) / 2
    a = x.float().abs().clamp(max=6.0)
    lo = torch.bucketize(a, mids, right=False)
    hi = torch.bucketize(a, mids, right=True)
    idx = torch.where((lo != hi) & (lo % 2 == 1), hi, lo)
    # the sign bit as compressed-tensors packs it: a negative that rounds to zero is -0 (code 8)
    return (idx + 8 * torch.signbit(x)).to(torch.uint8)


@register_kind
@dataclass
class NVFP4Tensor(QTensor):
    """codes (out, in) uint8 0..15; scale float8_e4m3fn (out, in / 16); global_scale float32 (1,)."""
    kind = "nvfp4"
    codes: torch.Tensor
    scale: torch.Tensor
    global_scale: torch.Tensor

    @property
    def shape(self):
        return tuple(self.codes.shape)

    def block_scale(self) -> torch.Tensor:
        """float32 (out, in / 16): the scale each block decodes with."""
        return self.scale.float() / self.global_scale.float()

    def dequantize(self) -> torch.Tensor:
        return e2m1_values()[self.codes.long()] * self.block_scale().repeat_interleave(BLOCK, dim=1)

    def stored_bytes(self) -> int:
        return self.codes.numel() // 2 + self.scale.numel() + 4

    def state(self):
        return {"codes": self.codes, "scale": self.scale, "global_scale": self.global_scale}

    def header(self):
        return {"block": BLOCK}

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


class NVFP4Grid(Grid):
    """static_only: the global scale comes from the whole matrix, fitted once up front."""
    kind = "nvfp4"
    static_only = True
    solve_block = 128

    def _fit(self, W):
        _check(W)
        g = global_scale_of(W)
        s = block_scales(W, g)
        return NVFP4Fit(s, g, s.float() / g)

    def rtn(self, W, importance=None):
        f = self._fit(W)
        scaled = W.detach().float() / f.per_block.repeat_interleave(BLOCK, dim=1)
        return NVFP4Tensor(round_e2m1(scaled), f.scale, f.global_scale)

    def fit(self, W, importance=None):
        return self._fit(W)

    def round_column(self, fitted, c, w):
        s = fitted.per_block[:, c // BLOCK]
        q = round_e2m1(w.float() / s)
        return q, e2m1_values()[q.long()] * s

    def encode(self, fitted, codes, reordered=False):
        if reordered:
            raise ValueError("NVFP4 blocks hold contiguous columns: they cannot follow a reordering")
        return NVFP4Tensor(codes.to(torch.uint8), fitted.scale, fitted.global_scale)

    def describe(self):
        return "nvfp4"


def _check(W: torch.Tensor) -> None:
    if W.ndim != 2 or W.shape[1] % BLOCK:
        raise LowbitError(f"NVFP4 needs 2-D weights with rows of a multiple of {BLOCK}, got shape "
                          f"{tuple(W.shape)}: keep this tensor in float (--ignore)")


@register_grid("nvfp4")
def _nvfp4_grid(spec, auto_clip):
    return NVFP4Grid()
