"""HQQ, half-quadratic quantization (Badri & Shaji, 2023): calibration-free, seconds per layer.

The grid of each group is chosen against an Lp error with p < 1, which tolerates a few large
misses (outlier weights) to fit the bulk of the group well. Half-quadratic splitting adds an
auxiliary error E ~= W - Q(W) and alternates two closed-form steps:

    E <- shrink_p(W - Q(W), beta)      (generalised soft threshold: the proximal step of |.|^p)
    grid <- least squares fit of W - E by (q - z) * s, codes q held fixed

with beta growing by kappa each round; the grid with the lowest Lp error seen is kept. The
paper's solver updates the zero point only; here the scale is refitted too (with codes fixed
the best (s, z) is a two-parameter regression per group), and on formats that store integer
zero points (GPTQ, AWQ, compressed-tensors) the zero is rounded inside the loop, so the
optimisation is over grids the file can hold. Symmetric grids keep z = 2**(bits-1) and fit s.

Options (spec.method_args): lp (0.7), beta (10), kappa (1.01), iters (20) as in the paper's
defaults. Integer grids only: llama.cpp's blocks and the code books keep their own rounding.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from lowbit.formats import QuantizedTensor
from lowbit.formats.int_affine import grouped_view, column_groups, fit_grid, quantize_codes, round_scale
from lowbit.methods.base import Method, register_method
from lowbit.options import options_of

log = logging.getLogger(__name__)
CHUNK_WEIGHTS = 1 << 22  # weights per solve: the loop holds a few float32 copies of them


@dataclass(frozen=True)
class HQQOptions:
    """spec.method_args of --method hqq."""
    lp: float = 0.7  # the p of the Lp error (p < 1: robust to outlier weights)
    beta: float = 10.0  # initial penalty of the split; grows by kappa each iteration
    kappa: float = 1.01
    iters: int = 20


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """argmin_e |e|^p + beta/2 (e - x)^2, the generalised soft threshold of the paper:
    sign(x) * max(|x| - |x|^(p-1) / beta, 0)."""
    a = x.abs()
    return torch.sign(x) * torch.relu(a - a.clamp_min(1e-12).pow(p - 1) / beta)


def lp_error(W: torch.Tensor, Wr: torch.Tensor, p: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """sum |W - Wr|^p over the last axis (per group)."""
    e = (W - Wr).abs().pow(p)
    return (e * mask if mask is not None else e).sum(-1)


def _codes(G, s, z, maxq):
    return torch.clamp(torch.round(G / s + z), 0, maxq)


def hqq_fit(W: torch.Tensor, bits: int, symmetric: bool, group_size: int, o: HQQOptions = HQQOptions(),
            scale_dtype: str | None = None, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point per group, (rows, ngroups) float32, for W (out, in).
    weight (in,): optional per-column importance (the extension; None: all columns equal)."""
    out, inp = W.shape
    rows = max(1, CHUNK_WEIGHTS // max(inp, 1))
    if group_size != 0 and out > rows:  # each row has its own groups
        parts = [hqq_fit(W[r:r + rows], bits, symmetric, group_size, o, scale_dtype, weight)
                 for r in range(0, out, rows)]
        return torch.cat([s for s, _ in parts]), torch.cat([z for _, z in parts])
    maxq = 2**bits - 1
    s, z = fit_grid(W, bits, symmetric, group_size, "minmax", scale_dtype)  # the paper starts from min-max
    G = grouped_view(W.float(), group_size)
    # padded columns of a partial last group (and zero-importance columns) take no part in a fit
    w = torch.ones(1, inp) if weight is None else weight.float().reshape(1, inp)
    m = grouped_view(w.repeat(out, 1) if group_size == 0 else w, group_size)
    s, z = s[..., None].clone(), z[..., None].clone()
    best_s, best_z = s.clone(), z.clone()
    best = lp_error(G, (_codes(G, s, z, maxq) - z) * s, o.lp, m)
    beta = o.beta
    for _ in range(o.iters):
        q = _codes(G, s, z, maxq)
        T = G - shrink_lp(G - (q - z) * s, beta, o.lp)  # what the grid should reproduce
        if symmetric:  # s = <T, q - z> / <q - z, q - z>
            c = q - z
            den = (m * c * c).sum(-1, keepdim=True)
            s_new = (m * T * c).sum(-1, keepdim=True) / den.clamp_min(1e-20)
        else:  # T ~= s q + b, b = -z s: weighted simple regression per group
            n = m.sum(-1, keepdim=True).clamp_min(1e-20)
            mq, mt = (m * q).sum(-1, keepdim=True) / n, (m * T).sum(-1, keepdim=True) / n
            var = (m * (q - mq) ** 2).sum(-1, keepdim=True)
            s_new = (m * (q - mq) * (T - mt)).sum(-1, keepdim=True) / var.clamp_min(1e-20)
            ok = (var > 0) & (s_new > 0)
            s_new = torch.where(ok, s_new, s)
            z_new = torch.where(ok, torch.round(mq - mt / s_new).clamp(0, maxq), z)
            # with z rounded, the scale's own least squares on the same codes
            c = q - z_new
            den = (m * c * c).sum(-1, keepdim=True)
            s_new = torch.where(den > 0, (m * T * c).sum(-1, keepdim=True) / den.clamp_min(1e-20), s_new)
            z = z_new
        s_new = torch.where(s_new > 0, s_new, s)
        s = round_scale(s_new, scale_dtype)
        err = lp_error(G, (_codes(G, s, z, maxq) - z) * s, o.lp, m)
        better = (err < best)[..., None]
        best = torch.minimum(err, best)
        best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
        beta *= o.kappa
    return best_s[..., 0], best_z[..., 0]


def hqq_quantize(W: torch.Tensor, bits: int, symmetric: bool, group_size: int, o: HQQOptions = HQQOptions(),
                 scale_dtype: str | None = None, act: str = "none") -> QuantizedTensor:
    scale, zero = hqq_fit(W, bits, symmetric, group_size, o, scale_dtype)
    g_idx = column_groups(W.shape[1], group_size, W.device)
    return QuantizedTensor(quantize_codes(W, scale, zero, bits, g_idx), scale, zero, g_idx, bits, group_size,
                           symmetric, act=act)


@register_method
class HQQ(Method):
    name = "hqq"
    options = HQQOptions

    def quantize(self, W, grid, spec, observer=None):
        if grid.kind != "int":  # llama.cpp's blocks and code books fit their own grids
            log.info("hqq fits integer grids; %s uses its own rounding", grid.describe())
            return grid.rtn(W)
        return hqq_quantize(W, grid.bits, grid.symmetric, grid.group_size, options_of(HQQOptions, spec.method_args),
                            grid.scale_dtype, grid.act)
