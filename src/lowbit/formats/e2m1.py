"""e2m1 (FP4) values in blocks of consecutive weights of a row, each block with its own scale:
what NVFP4 (formats/nvfp4.py) and MXFP4 (formats/mxfp4.py) share. They differ only in how a
block's scale is chosen and stored.

Codes are the e2m1 index (0..7: 0, 0.5, 1, 1.5, 2, 3, 4, 6) with the sign in bit 3.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from lowbit.errors import LowbitError
from lowbit.formats.grid import Grid

E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


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


class E2M1Blocks:
    """Mixin of an e2m1 quantized tensor: `codes` (out, in) and block_scale() (out, in / block)."""
    block: ClassVar[int]
    codes: torch.Tensor

    @property
    def shape(self):
        return tuple(self.codes.shape)

    def block_scale(self) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        return e2m1_values()[self.codes.long()] * self.block_scale().repeat_interleave(self.block, dim=1)

    def header(self):
        return {"block": self.block}


class E2M1BlockGrid(Grid):
    """fit(W) returns a fit with per_block (out, in / block), the float32 scale of each block;
    encode(fit, codes) the tensor. Scales are fitted up front from the whole matrix (GPTQ's
    static groups)."""
    static_only = True
    name: ClassVar[str]  # how messages name the grid

    def rounder(self, x: torch.Tensor) -> torch.Tensor:
        return round_e2m1(x)

    def check(self, W: torch.Tensor) -> None:
        if W.ndim != 2 or W.shape[1] % self.block:
            raise LowbitError(f"{self.name} needs 2-D weights with rows of a multiple of {self.block}, got shape "
                              f"{tuple(W.shape)}: keep this tensor in float (--ignore)")

    def rtn(self, W, importance=None):
        f = self.fit(W)
        return self.encode(f, self.rounder(W.detach().float() / f.per_block.repeat_interleave(self.block, dim=1)))

    def round_column(self, fitted, c, w):
        s = fitted.per_block[:, c // self.block]
        q = self.rounder(w.float() / s)
        return q, e2m1_values()[q.long()] * s

    def check_order(self, reordered: bool) -> None:
        if reordered:
            raise ValueError(f"{self.name} blocks hold contiguous columns: they cannot follow a reordering")

