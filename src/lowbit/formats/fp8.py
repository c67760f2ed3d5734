"""FP8 weights (e4m3fn; e5m2 accepted) with a float scale per tensor, per output channel or per
square block, as compressed-tensors' "float-quantized" checkpoints store them (vLLM's FP8).

A scale covers a tile of the weight: the whole tensor (group size 0), one row (-1, a channel)
or a B x B block (group size B, 128 in DeepSeek-V3-style checkpoints). scale = amax / 448, the
largest finite e4m3fn value (57344 for e5m2), so the tile's largest weight maps to the top of
the range; a weight's code is float8(w / scale), torch's cast (round to nearest even) after
clamping to the finite range, and its value code * scale. An all-zero tile keeps scale 1.
Bits per weight: 8 + 32 / (weights per tile).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.errors import LowbitError
from lowbit.formats.grid import Grid, register_grid
from lowbit.formats.qtensor import QTensor, register_kind

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def fp8_max(kind: str) -> float:
    return float(torch.finfo(FP8_DTYPES[kind]).max)


def tile_shape(shape: tuple[int, int], block: int) -> tuple[int, int]:
    """(rows, cols) of the scale grid: one scale, one per row, or one per block x block tile."""
    out, inp = shape
    if block == 0:
        return 1, 1
    if block == -1:
        return out, 1
    return -(-out // block), -(-inp // block)


def expand(scale: torch.Tensor, shape: tuple[int, int], block: int) -> torch.Tensor:
    """The scale of every weight (out, in)."""
    out, inp = shape
    if block <= 0:
        return scale.expand(out, inp)
    return scale.repeat_interleave(block, 0)[:out].repeat_interleave(block, 1)[:, :inp]


def tile_amax(W: torch.Tensor, block: int) -> torch.Tensor:
    A = W.detach().float().abs()
    if block == 0:
        return A.amax().reshape(1, 1)
    if block == -1:
        return A.amax(dim=1, keepdim=True)
    out, inp = A.shape
    r, c = tile_shape(A.shape, block)
    padded = torch.nn.functional.pad(A, (0, c * block - inp, 0, r * block - out))
    return padded.reshape(r, block, c, block).amax(dim=(1, 3))


def scales_for(W: torch.Tensor, block: int, kind: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """amax / fp8 max per tile, rounded to the dtype the file stores scales in."""
    amax = tile_amax(W, block)
    scale = torch.where(amax > 0, amax / fp8_max(kind), torch.ones_like(amax))
    return scale.to(dtype).float()


def to_fp8(x: torch.Tensor, kind: str) -> torch.Tensor:
    top = fp8_max(kind)
    return x.clamp(-top, top).to(FP8_DTYPES[kind])


@register_kind
@dataclass
class FP8Tensor(QTensor):
    """codes (out, in) float8; scale float32 of tile_shape(shape, block). act: how the runtime
    rounds the Linear's input ("none", or "fp8-token": formats/act_quant.py), recorded with the
    weight so that formats and loaders see it."""
    kind = "fp8"
    codes: torch.Tensor
    scale: torch.Tensor
    block: int = -1          # 0 per tensor, -1 per channel, B per B x B block
    fp8: str = "e4m3"
    act: str = "none"

    @property
    def shape(self):
        return tuple(self.codes.shape)

    def grid_name(self) -> str:
        return "fp8" if self.fp8 == "e4m3" else f"fp8-{self.fp8}"

    def dequantize(self) -> torch.Tensor:
        return self.codes.float() * expand(self.scale, self.shape, self.block)

    def stored_bytes(self) -> int:
        return self.codes.numel() + 4 * self.scale.numel()

    def state(self):
        return {"codes": self.codes, "scale": self.scale}

    def header(self):
        return {"block": self.block, "fp8": self.fp8, "act": self.act}

    @classmethod
    def from_state(cls, state, header):
        return cls(state["codes"], state["scale"].float(), int(header["block"]), header.get("fp8", "e4m3"),
                   header.get("act", "none"))

    def describe(self):
        return _describe(self.fp8, self.block) + ("" if self.act == "none" else f", {self.act} activations")


def _describe(kind: str, block: int) -> str:
    tile = {0: "per tensor", -1: "per channel"}.get(block, f"b{block}x{block}")
    return f"fp8 {kind} {tile}"


@dataclass
class FP8Fit:
    scale: torch.Tensor          # tile_shape, float32 (as the file stores it)
    per_row: torch.Tensor | None  # (out, ncol_tiles): the scale of each row in each column tile


class FP8Grid(Grid):
    """static_only: a tile's scale comes from the unquantized weights, fitted once up front
    (a per-tensor or per-block scale spans many columns of GPTQ's loop)."""
    kind = "fp8"
    static_only = True

    def __init__(self, block: int = -1, fp8: str = "e4m3", scale_dtype: torch.dtype = torch.float32,
                 act: str = "none"):
        if fp8 not in FP8_DTYPES:
            raise LowbitError(f"FP8 comes as {' or '.join(FP8_DTYPES)}, not {fp8!r}")
        self.block_tiles, self.fp8, self.scale_dtype, self.act = block, fp8, scale_dtype, act
        self.rows_independent = block == -1

    def rtn(self, W, importance=None):
        _check(W)
        scale = scales_for(W, self.block_tiles, self.fp8, self.scale_dtype)
        codes = to_fp8(W.detach().float() / expand(scale, tuple(W.shape), self.block_tiles), self.fp8)
        return FP8Tensor(codes, scale, self.block_tiles, self.fp8, self.act)

    def fit(self, W, importance=None):
        _check(W)
        scale = scales_for(W, self.block_tiles, self.fp8, self.scale_dtype)
        out = W.shape[0]
        if self.block_tiles > 0:
            per_row = scale.repeat_interleave(self.block_tiles, 0)[:out]
        else:
            per_row = scale.expand(out, 1)
        return FP8Fit(scale, per_row)

    def round_column(self, fitted, c, w):
        s = fitted.per_row[:, c // self.block_tiles if self.block_tiles > 0 else 0]
        q = to_fp8(w.float() / s, self.fp8)
        return q.view(torch.uint8), q.float() * s

    def encode(self, fitted, codes, reordered=False):
        if reordered:
            raise ValueError("FP8 tiles hold contiguous columns: they cannot follow a reordering")
        return FP8Tensor(codes.view(FP8_DTYPES[self.fp8]), fitted.scale, self.block_tiles, self.fp8, self.act)

    def join_rows(self, parts):
        return FP8Tensor(torch.cat([p.codes for p in parts]), torch.cat([p.scale for p in parts]),
                         self.block_tiles, self.fp8, self.act)

    def describe(self):
        return _describe(self.fp8, self.block_tiles)


def _check(W: torch.Tensor) -> None:
    if W.ndim != 2:
        raise LowbitError(f"FP8 quantizes 2-D weights, got shape {tuple(W.shape)}: keep this tensor in float")


def _fp8_grid(kind: str):
    def factory(spec, auto_clip):
        dtype = getattr(torch, spec.scale_dtype) if spec.scale_dtype else torch.float32
        return FP8Grid(spec.group_size, kind, dtype, getattr(spec, "act", "none"))
    return factory


register_grid("fp8")(_fp8_grid("e4m3"))
register_grid("fp8-e5m2")(_fp8_grid("e5m2"))
