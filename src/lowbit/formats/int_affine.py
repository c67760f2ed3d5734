"""Integer affine grids: w ~= (q - z) * s, with q in [0, 2**bits - 1].

One convention for every layout, as GPTQ uses it: codes are unsigned and the zero
point is an integer on the same grid. Symmetric grids fix z = 2**(bits-1), so a signed
code is simply q - z (that is how compressed-tensors stores them).

Granularity is a group size over the input (column) axis of a (out, in) weight:
  group_size > 0   per group; the last group of a row may be partial (ceil(in / G) groups)
  group_size == -1 per output channel (one group spanning the row)
  group_size == 0  per tensor (a single scale)
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from lowbit.formats.grid import Grid, register_grid
from lowbit.formats.qtensor import QTensor, register_kind

PER_CHANNEL = -1
PER_TENSOR = 0
MSE_GRID = 100  # shrink factors tried by the clipping search (as in GPTQ's reference)
MSE_MAX_SHRINK = 0.8
MSE_NORM = 2.4


def num_groups(in_features: int, group_size: int) -> int:
    if group_size > 0:
        return -(-in_features // group_size)
    return 1


def column_groups(in_features: int, group_size: int, device=None) -> torch.Tensor:
    """Group index of every column, (in,): the g_idx of a layout without reordering."""
    cols = torch.arange(in_features, device=device)
    if group_size > 0:
        return cols // group_size
    return torch.zeros_like(cols)


def grouped_view(W: torch.Tensor, group_size: int) -> torch.Tensor:
    """View W (out, in) as (rows, ngroups, G). Pads a partial last group with zeros:
    zeros change neither min/max (zero is always in range) nor the error (zero is exact)."""
    out, inp = W.shape
    if group_size == PER_TENSOR:
        return W.reshape(1, 1, -1)
    if group_size == PER_CHANNEL:
        return W.reshape(out, 1, inp)
    ng = num_groups(inp, group_size)
    pad = ng * group_size - inp
    if pad:
        W = torch.nn.functional.pad(W, (0, pad))
    return W.reshape(out, ng, group_size)


def _work(W: torch.Tensor) -> torch.Tensor:
    """Grid math in float32, or float64 when given float64 (reference computations)."""
    return W if W.dtype == torch.float64 else W.float()


def round_scale(scale: torch.Tensor, scale_dtype: str | None) -> torch.Tensor:
    """Scales as a format stores them ("float16" for GPTQ/AWQ), kept in the working dtype, so
    codes are chosen on the grid the file will hold. None: unchanged. A positive scale that
    would underflow to 0 becomes the dtype's smallest normal number."""
    if scale_dtype is None:
        return scale
    dtype = getattr(torch, scale_dtype)
    if dtype == scale.dtype:
        return scale
    rounded = scale.to(dtype).to(scale.dtype)
    return torch.where((rounded == 0) & (scale > 0), torch.finfo(dtype).tiny, rounded)


def _params_from_range(xmin, xmax, bits: int, symmetric: bool, scale_dtype: str | None = None):
    maxq = 2**bits - 1
    if symmetric:
        half = 2 ** (bits - 1)
        scale = torch.maximum(xmin.abs(), xmax) / (half - 1)
        scale = round_scale(torch.where(scale > 0, scale, torch.ones_like(scale)), scale_dtype)
        zero = torch.full_like(scale, float(half))
    else:
        scale = (xmax - xmin) / maxq
        scale = round_scale(torch.where(scale > 0, scale, torch.ones_like(scale)), scale_dtype)
        zero = torch.round(-xmin / scale).clamp(0, maxq)
    return scale, zero


def grid_from_range(xmin, xmax, bits: int, symmetric: bool, scale_dtype: str | None = None):
    """Scale and zero point of the grid spanning [xmin, xmax] per group (zero always in range)."""
    return _params_from_range(xmin.clamp(max=0), xmax.clamp(min=0), bits, symmetric, scale_dtype)


def _fake_quant(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return (q - zero) * scale


def _clip_error(G, scale, zero, maxq):
    """sum |G - Q(G)|^MSE_NORM per group: _fake_quant's arithmetic step by step in one buffer
    (the search runs it ~23 times over every weight; temporaries cost more than the math)."""
    t = G / scale
    t.round_().add_(zero).clamp_(0, maxq).sub_(zero).mul_(scale).sub_(G)
    return t.abs_().pow_(MSE_NORM).sum(-1)


FIT_CHUNK = 1 << 22  # weights per fit: the clipping search holds a few float32 copies of them


def fit_grid(W: torch.Tensor, bits: int, symmetric: bool, group_size: int,
             clip: str = "minmax", scale_dtype: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per group: (rows, ngroups) float32 each (zero holds integers).

    clip="minmax" uses the full range; clip="mse" shrinks the range per group to the
    factor that minimises sum |w - Q(w)|^2.4 (the clipping search of GPTQ's reference).
    scale_dtype: the dtype the output format stores scales in (round_scale); the search
    and the zero points use the rounded scales."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    rows = max(1, FIT_CHUNK // max(W.shape[1], 1))
    if group_size != PER_TENSOR and W.shape[0] > rows:  # rows have their own grids: a block of rows at a time
        parts = [fit_grid(W[r:r + rows], bits, symmetric, group_size, clip, scale_dtype)
                 for r in range(0, W.shape[0], rows)]
        return torch.cat([s for s, _ in parts]), torch.cat([z for _, z in parts])
    G = grouped_view(_work(W), group_size)  # (rows, ng, G)
    xmin = G.amin(dim=-1).clamp(max=0)
    xmax = G.amax(dim=-1).clamp(min=0)
    scale, zero = _params_from_range(xmin, xmax, bits, symmetric, scale_dtype)
    if clip == "mse":
        maxq = 2**bits - 1
        best = torch.full_like(scale, float("inf"))

        def try_shrink(p):  # keep, per group, the shrink factor with the lowest error
            nonlocal best, scale, zero
            s, z = _params_from_range(p * xmin, p * xmax, bits, symmetric, scale_dtype)
            err = _clip_error(G, s[..., None], z[..., None], maxq)
            better = err < best
            best = torch.where(better, err, best)
            scale = torch.where(better, s, scale)
            zero = torch.where(better, z, zero)
            return better

        # coarse-to-fine over GPTQ's range of shrink factors (1.0 down to 0.2 in steps of
        # 0.01): steps of 0.05 first, then 0.01 around each group's best coarse factor
        coarse = torch.arange(0, int(MSE_MAX_SHRINK * MSE_GRID), 5)
        best_p = torch.ones_like(scale)
        for i in coarse.tolist():
            p = 1 - i / MSE_GRID
            best_p = torch.where(try_shrink(p), torch.full_like(best_p, p), best_p)
        for d in (-4, -3, -2, -1, 1, 2, 3, 4):
            p = (best_p + d / MSE_GRID).clamp(1 - MSE_MAX_SHRINK, 1.0)
            try_shrink(p)
    elif clip != "minmax":
        raise ValueError(f"clip must be 'minmax' or 'mse', got {clip!r}")
    return scale, zero


def _expand(p: torch.Tensor, g_idx: torch.Tensor, out: int) -> torch.Tensor:
    """(rows, ngroups) per-group parameter -> (out, in) per-weight, following g_idx."""
    return p.expand(out, -1)[:, g_idx] if p.shape[0] == 1 else p[:, g_idx]


def quantize_codes(W, scale, zero, bits: int, g_idx: torch.Tensor) -> torch.Tensor:
    """Codes q (out, in) uint8 for W on the grid (scale, zero), groups given per column."""
    out = W.shape[0]
    s = _expand(scale, g_idx, out)
    z = _expand(zero, g_idx, out)
    return torch.clamp(torch.round(_work(W) / s) + z, 0, 2**bits - 1).to(torch.uint8)


def dequantize(q, scale, zero, g_idx: torch.Tensor) -> torch.Tensor:
    """(q - zero) * scale per weight, in place on one float32 copy of q, a block of rows at a
    time: per-weight copies of scale and zero would be two more matrices of the weight's size.
    Bit for bit the value of the one-expression formula."""
    out = q.shape[0]
    w = q.to(torch.float32)
    rows = max(1, FIT_CHUNK // max(q.shape[1], 1))
    for r in range(0, out, rows):
        n = min(rows, out - r)
        zr = zero if zero.shape[0] == 1 else zero[r:r + n]
        sr = scale if scale.shape[0] == 1 else scale[r:r + n]
        w[r:r + n].sub_(_expand(zr, g_idx, n)).mul_(_expand(sr, g_idx, n))
    return w


@register_kind
@dataclass
class QuantizedTensor(QTensor):
    """Codes and grid of one (out, in) weight on an integer affine grid.

    q (out, in) uint8 in [0, 2**bits); scale, zero (rows, ngroups) float32 where rows is
    out (or 1 for per-tensor); g_idx (in,) group of each column; zero == 2**(bits-1)
    everywhere when symmetric."""

    kind = "int"
    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    g_idx: torch.Tensor
    bits: int
    group_size: int
    symmetric: bool
    act_order: bool = False  # g_idx is not the plain column // group_size
    act: str = "none"  # how the runtime treats the input (formats/act_quant.py: int8-token, llm-int8)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.q, self.scale, self.zero, self.g_idx)

    def header_only(self):
        # the config of integer formats reads fields (bits, g_idx, scale dtype) off the tensor
        # itself; clones, since an empty view would keep the whole storage of the codes alive
        # (22 layers of a 1.1B model held 1 GB that way while the output was written)
        g_idx = self.g_idx.clone() if self.g_idx is not None else None
        return replace(self, q=self.q[:0].clone(), scale=self.scale[:0].clone(), zero=self.zero[:0].clone(),
                       g_idx=g_idx)

    def signed_codes(self) -> torch.Tensor:
        """q - 2**(bits-1) as int8: the signed storage of compressed-tensors."""
        return (self.q.to(torch.int16) - 2 ** (self.bits - 1)).to(torch.int8)

    @classmethod
    def from_signed_int8(cls, codes: torch.Tensor, scale: torch.Tensor, act: str = "none") -> "QuantizedTensor":
        """The int8 per-output-channel tensor whose signed_codes() are `codes` (out, in) int8 and
        scales `scale` (out values): what int8 formats store (W8A8, bitsandbytes 8-bit)."""
        out, inp = codes.shape
        s = scale.float().reshape(out, 1)
        q = (codes.to(torch.int16) + 128).to(torch.uint8)
        return cls(q, s, torch.full_like(s, 128.0), column_groups(inp, PER_CHANNEL), 8, PER_CHANNEL, True, act=act)

    def stored_bytes(self) -> int:
        """Codes at `bits`, a 16-bit scale per group (what GPTQ, AWQ and compressed-tensors
        store for half-precision models), zero points at `bits` when asymmetric, and an int32
        g_idx per column when groups follow act-order."""
        out, inp = self.shape
        groups = self.scale.numel()
        bits = out * inp * self.bits + 16 * groups + (0 if self.symmetric else self.bits * groups)
        return -(-bits // 8) + (4 * inp if self.act_order else 0)

    def state(self) -> dict[str, torch.Tensor]:
        return {"q": self.q, "scale": self.scale, "zero": self.zero, "g_idx": self.g_idx}

    def header(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric,
                "act_order": self.act_order, "act": self.act}

    @classmethod
    def from_state(cls, state, header):
        return cls(state["q"], state["scale"], state["zero"], state["g_idx"], header["bits"],
                   header["group_size"], header["symmetric"], header.get("act_order", False),
                   header.get("act", "none"))

    def describe(self) -> str:
        g = {PER_CHANNEL: "per channel", PER_TENSOR: "per tensor"}.get(self.group_size, f"g{self.group_size}")
        return (f"int{self.bits} {g}" + ("" if self.symmetric else " asym")
                + ("" if self.act == "none" else f", {self.act} activations"))


@dataclass
class IntFit:
    """An integer grid being fitted: scale, zero (rows, ngroups) and each column's group."""
    scale: torch.Tensor
    zero: torch.Tensor
    g_idx: torch.Tensor
    static: bool = False
    _groups: tuple | None = None  # (ngroups, rows) scale and zero, and each column's group, static grids

    def column(self, c: int):
        if self.static:  # contiguous per group, not per column (that would be two matrices of W's size)
            if self._groups is None:
                self._groups = (self.scale.T.contiguous(), self.zero.T.contiguous(), self.g_idx.tolist())
            g = self._groups[2][c]
            return self._groups[0][g], self._groups[1][g]
        g = int(self.g_idx[c])
        return self.scale[:, g], self.zero[:, g]


class IntAffineGrid(Grid):
    """w ~= (q - z) * s with q in [0, 2**bits): bits, group size (block), symmetric, the clipping
    search (minmax | mse) and the dtype the format stores scales in."""
    kind = "int"
    reorderable = True

    def __init__(self, bits: int, group_size: int, symmetric: bool = True, clip: str = "minmax",
                 scale_dtype: str | None = None, dtype: torch.dtype = torch.float32, act: str = "none"):
        self.bits, self.group_size, self.symmetric, self.act = bits, group_size, symmetric, act
        self.clip, self.scale_dtype, self.dtype = clip, scale_dtype, dtype
        self.block = group_size if group_size > 0 else 0
        self.maxq = 2**bits - 1
        self.rows_independent = group_size != PER_TENSOR  # one scale per tensor couples every row

    def rtn(self, W, importance=None):
        return replace(quantize_rtn(W, self.bits, self.symmetric, self.group_size, self.clip, self.scale_dtype),
                       act=self.act)

    def fit(self, W, importance=None):
        scale, zero = fit_grid(W, self.bits, self.symmetric, self.group_size, self.clip, self.scale_dtype)
        return IntFit(scale, zero, column_groups(W.shape[1], self.group_size), static=True)

    def empty(self, rows, cols):
        ng = num_groups(cols, self.group_size)
        scale = torch.zeros(rows if self.group_size != PER_TENSOR else 1, ng, dtype=self.dtype)
        return IntFit(scale, torch.zeros_like(scale), column_groups(cols, self.group_size))

    def fit_block(self, fitted, W_cols, block, cols, importance=None):
        s, z = fit_grid(W_cols, self.bits, self.symmetric, PER_CHANNEL, self.clip, self.scale_dtype)
        fitted.scale[:, block], fitted.zero[:, block] = s[:, 0], z[:, 0]
        fitted.g_idx[cols] = block

    def round_column(self, fitted, c, w):
        s, z = fitted.column(c)
        q = torch.clamp(torch.round(w / s) + z, 0, self.maxq)
        return q, (q - z) * s

    def encode(self, fitted, codes, reordered=False):
        return QuantizedTensor(codes.to(torch.uint8), fitted.scale, fitted.zero, fitted.g_idx.clone(), self.bits,
                               self.group_size, self.symmetric, act_order=reordered, act=self.act)

    def join_rows(self, parts):
        first = parts[0]
        return QuantizedTensor(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]),
                               torch.cat([p.zero for p in parts]), first.g_idx, self.bits, self.group_size,
                               self.symmetric, first.act_order, self.act)

    def describe(self):
        return QuantizedTensor.describe(self)  # same fields: bits, group_size, symmetric


@register_grid("int")
def _int_grid(spec, auto_clip):
    clip = auto_clip if spec.clip == "auto" else spec.clip
    return IntAffineGrid(spec.bits, spec.group_size, spec.symmetric, clip, spec.scale_dtype,
                         act=getattr(spec, "act", "none"))


def quantize_rtn(W: torch.Tensor, bits: int, symmetric: bool = True, group_size: int = 128,
                 clip: str = "minmax", scale_dtype: str | None = None) -> QuantizedTensor:
    """Round-to-nearest of a (out, in) weight onto its own fitted grid."""
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(W.shape)}")
    scale, zero = fit_grid(W, bits, symmetric, group_size, clip, scale_dtype)
    g_idx = column_groups(W.shape[1], group_size, W.device)
    q = quantize_codes(W, scale, zero, bits, g_idx)
    return QuantizedTensor(q, scale, zero, g_idx, bits, group_size, symmetric)
