"""GPTQ (Frantar et al., 2022): quantize columns one at a time and spread each column's
error over the columns not yet quantized, weighted by the inverse Hessian of the layer's
squared output error. Lazy block updates keep the work in matrix products.

Options (spec.method_args): damp_percent (0.01 of mean diag H), block_size (128),
act_order (columns by decreasing diag H; groups then follow that order and g_idx is
written), static_groups (grids fixed from the unquantized weights in natural order, so with
act_order the group of a column stays column // G and no g_idx is needed).
Defaults: act_order with static groups (the quality of act-order, the plain layout and
fast kernels of natural groups); spec.clip "auto" means an MSE clipping search.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from lowbit.calibration.hessian import HessianObserver
from lowbit.formats import QuantizedTensor, column_groups, fit_grid, quantize_codes, quantize_rtn
from lowbit.methods.base import Method, register_method
from lowbit.options import options_of
from lowbit.methods.gptq_solver import HessianFactor, hessian_factor, prepare, solve_columns  # noqa: F401

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GPTQOptions:
    """spec.method_args of --method gptq (besides the walk's, lowbit/options.py)."""
    damp_percent: float = 0.01  # dampening, a fraction of the mean Hessian diagonal
    block_size: int | None = None  # columns per lazy update (None: 128 on integer grids, 256 on GGML)
    act_order: bool = True  # columns by decreasing Hessian diagonal
    static_groups: bool = True  # group grids fixed from the unquantized weights (no g_idx)
    gguf_solver: str = "gptq"  # GGML grids: gptq, or imatrix (llama.cpp's weighted rounding)
    ggml_order: str = "auto"  # GGML grids' column order: auto, group, static, none

    CHOICES: ClassVar[dict] = {"gguf_solver": ("gptq", "imatrix"), "ggml_order": ("auto", "group", "static", "none")}


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, symmetric: bool, group_size: int,
                  clip: str = "minmax", damp_percent: float = 0.01, block_size: int = 128,
                  act_order: bool = False, static_groups: bool = False, scale_dtype: str | None = None,
                  dtype: torch.dtype = torch.float32, factor: HessianFactor | None = None) -> QuantizedTensor:
    """W (out, in), H (in, in) -> QuantizedTensor on a grid chosen as each group is reached.
    The solve runs in `dtype` (float32; the inverse Hessian is formed in float64); scales are
    rounded to `scale_dtype` (what the output format stores) as each grid is fitted.
    factor: hessian_factor(H, damp_percent, act_order) when already computed."""
    out, inp = W.shape
    if factor is None:
        factor = hessian_factor(H, damp_percent, act_order, dtype)
    W = W.to(dtype).clone()
    W[:, factor.dead] = 0  # their weights do not matter
    maxq = 2**bits - 1

    grouped = group_size > 0
    if grouped:
        # blocks hold whole groups, so a group's grid is fitted on fully updated weights
        block_size = max(group_size, (block_size // group_size) * group_size)
    static = None
    if not grouped or static_groups:
        static = fit_grid(W, bits, symmetric, group_size, clip, scale_dtype)  # (rows, ngroups) each

    perm, U = factor.perm, factor.U  # U: (in, in) upper factor of H^-1, in processing order
    if perm is not None:
        W = W[:, perm]

    ng = -(-inp // group_size) if grouped else 1
    scale = torch.zeros(out if group_size != 0 else 1, ng, dtype=dtype)
    zero = torch.zeros_like(scale)
    if static is not None:
        scale, zero = static
    natural_groups = column_groups(inp, group_size)
    col_group = natural_groups[perm] if perm is not None else natural_groups  # group of each processed col
    if grouped and not static_groups:
        col_group = torch.arange(inp) // group_size  # groups follow the processing order

    if static is not None:
        col_scale = scale[:, col_group].T.contiguous()  # (in, rows) grid of each processed column
        col_zero = zero[:, col_group].T.contiguous()
    current = {}  # the grid of the group being quantized (dynamic groups)

    def round_column(j: int, WT: torch.Tensor) -> torch.Tensor:
        if static is not None:
            s, z = col_scale[j], col_zero[j]
        else:
            if j % group_size == 0:  # a new group: its grid from the weights as updated so far
                g = int(col_group[j])
                gs, gz = fit_grid(WT[j:j + group_size].T, bits, symmetric, -1, clip, scale_dtype)
                scale[:, g], zero[:, g] = gs[:, 0], gz[:, 0]
                current["s"], current["z"] = gs[:, 0], gz[:, 0]
            s, z = current["s"], current["z"]
        return (torch.clamp(torch.round(WT[j] / s) + z, 0, maxq) - z) * s

    Q = solve_columns(W.T.contiguous(), U, block_size, round_column).T

    if perm is not None:
        inv = torch.argsort(perm)
        Q = Q[:, inv]
        g_idx = col_group[inv]
    else:
        g_idx = col_group
    codes = quantize_codes(Q, scale, zero, bits, g_idx)  # Q lies on the grid: exact
    reordered = bool(act_order and grouped and not static_groups)
    return QuantizedTensor(codes, scale, zero, g_idx, bits, group_size, symmetric, act_order=reordered)


@register_method
class GPTQ(Method):
    name = "gptq"
    needs_calibration = True
    options = GPTQOptions

    def observer(self, module, spec):
        return HessianObserver(module.in_features, module.weight.device)

    def quantize(self, W, spec, observer=None):
        if spec.ggml_type is not None:  # a GGUF tensor: GPTQ on llama.cpp's block grids
            from lowbit.methods.ggml_grid import quantize_on_ggml_grid
            return quantize_on_ggml_grid(W, spec, observer)
        clip = "mse" if spec.clip == "auto" else spec.clip
        if observer is None or observer.n == 0:
            log.warning("no calibration inputs reached this layer: using round-to-nearest")
            return quantize_rtn(W, spec.bits, spec.symmetric, spec.group_size, clip, spec.scale_dtype)
        o = options_of(GPTQOptions, spec.method_args)
        damp, act_order = o.damp_percent, o.act_order
        factors = observer.__dict__.setdefault("gptq_factors", {})  # shared input, shared factor
        if (damp, act_order) not in factors:
            factors[damp, act_order] = hessian_factor(observer.H, damp, act_order)
        return gptq_quantize(W, observer.H, spec.bits, spec.symmetric, spec.group_size, clip,
                             damp_percent=damp, block_size=o.block_size or 128, act_order=act_order,
                             static_groups=o.static_groups, scale_dtype=spec.scale_dtype,
                             factor=factors[damp, act_order])
