"""AWQ, activation-aware weight quantization (Lin et al., 2023), the full recipe:

1. per-channel scales s = mean|x| ** alpha for each group of Linears that share an input
   (norm -> q/k/v, norm -> gate/up, up -> down), alpha from a grid of 20 chosen per group
   against the layer's output error with the scaled weights rounded to nearest on their grid,
   and folded exactly into the op before (transforms/smooth.py with rule "awq", run by the walk
   because this method smooths);
2. then, per Linear, the clipping search: each group of weights keeps the range shrink factor
   (1.0 down to 0.55 in steps of 0.05, AWQ's grid) that minimises the group's output error
   over the calibration inputs, sum_t (x_t . (w - Q(w)))^2 = (w - Q(w))^T H (w - Q(w)) with the
   group's block of H = X^T X: every calibration token counts, not a sample of them;
3. round to nearest on the chosen grid.

AWQ's scaling before GPTQ is --method gptq --smooth awq (GPTQ then picks its own grid). On
llama.cpp's blocks and the code books step 2 is their own rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.calibration.hessian import HessianObserver
from lowbit.formats import QuantizedTensor
from lowbit.formats.int_affine import column_groups, grid_from_range, grouped_view, quantize_codes
from lowbit.methods.base import Method, register_method
from lowbit.options import options_of

ROWS_PER_STEP = 256  # rows of W per clip-search step (its work is rows x groups x G x G)


@dataclass(frozen=True)
class AWQOptions:
    """spec.method_args of --method awq (the scale search's own options are the walk's:
    smooth_tokens, alpha)."""
    clip_grid: int = 20  # shrink factors 1 - i / clip_grid ...
    max_shrink: float = 0.5  # ... for i / clip_grid < max_shrink
    clip_search: bool = True  # off: AWQ's scaling with min-max grids


def group_hessians(H: torch.Tensor, group_size: int) -> torch.Tensor:
    """The diagonal blocks of H (in, in) per group of columns: (ngroups, G, G), a partial last
    group padded with zeros (its padded weights are zero errors anyway)."""
    n = H.shape[0]
    G = n if group_size <= 0 else group_size
    ng = -(-n // G)
    pad = ng * G - n
    Hp = torch.nn.functional.pad(H.float(), (0, pad, 0, pad)) if pad else H.float()
    idx = torch.arange(ng)
    return Hp.reshape(ng, G, ng, G)[idx, :, idx, :]


def output_error(E: torch.Tensor, Hg: torch.Tensor) -> torch.Tensor:
    """e^T H_g e per row and group: E (rows, ng, G), Hg (ng, G, G) -> (rows, ng)."""
    return torch.einsum("rgi,gij,rgj->rg", E, Hg, E)


def clip_search(W: torch.Tensor, H: torch.Tensor, bits: int, symmetric: bool, group_size: int,
                o: AWQOptions = AWQOptions(), scale_dtype: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per (row, group) after AWQ's clipping search against output error."""
    if group_size == 0:
        raise ValueError("AWQ's clipping search works per group or per channel, not per tensor")
    maxq = 2**bits - 1
    Hg = group_hessians(H, group_size)
    ratios = [1 - i / o.clip_grid for i in range(int(o.max_shrink * o.clip_grid))]
    scales, zeros = [], []
    for r in range(0, W.shape[0], ROWS_PER_STEP):
        G = grouped_view(W[r:r + ROWS_PER_STEP].float(), group_size)  # (rows, ng, G)
        lo, hi = G.amin(-1), G.amax(-1)
        best = best_s = best_z = None
        for p in ratios:
            s, z = grid_from_range(p * lo, p * hi, bits, symmetric, scale_dtype)
            q = torch.clamp(torch.round(G / s[..., None]) + z[..., None], 0, maxq)
            err = output_error(G - (q - z[..., None]) * s[..., None], Hg)
            if best is None:
                best, best_s, best_z = err, s, z
            else:
                better = err < best
                best = torch.where(better, err, best)
                best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
        scales.append(best_s)
        zeros.append(best_z)
    return torch.cat(scales), torch.cat(zeros)


@register_method
class AWQ(Method):
    name = "awq"
    needs_calibration = True
    options = AWQOptions
    smooths = "awq"  # the walk runs AWQ's scale search first (pipeline/smoothing.py)

    def observer(self, module, spec):
        return HessianObserver(module.in_features, module.weight.device)

    def quantize(self, W, grid, spec, observer=None):
        o = options_of(AWQOptions, spec.method_args)
        if grid.kind != "int" or not o.clip_search or observer is None or observer.n == 0 or grid.group_size == 0:
            return grid.rtn(W)
        scale, zero = clip_search(W, observer.H, grid.bits, grid.symmetric, grid.group_size, o, grid.scale_dtype)
        g_idx = column_groups(W.shape[1], grid.group_size, W.device)
        return QuantizedTensor(quantize_codes(W, scale, zero, grid.bits, g_idx), scale, zero, g_idx, grid.bits,
                               grid.group_size, grid.symmetric, act=grid.act)
