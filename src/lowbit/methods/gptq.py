"""GPTQ (Frantar et al., 2022): quantize columns one at a time and spread each column's
error over the columns not yet quantized, weighted by the inverse Hessian of the layer's
squared output error, on whatever grid the walk hands it (the solver is
methods/gptq_solver.gptq_on_grid; this file only maps options to it).

Options (spec.method_args): damp_percent (0.01 of mean diag H), block_size (128; 256 on GGML
blocks), act_order (columns by decreasing diag H; on integer grids without static groups the
groups then follow that order and g_idx is written), static_groups (grids fixed from the
unquantized weights in natural order, so with act_order the group of a column stays
column // G and no g_idx is needed). Defaults: act_order with static groups (the quality of
act-order, the plain layout and fast kernels of natural groups); spec.clip "auto" means an MSE
clipping search. On llama.cpp's blocks ggml_order picks the column order instead (auto: static
on the 32-column types, act-order inside each block on the 256-column k-quants,
docs/design/gguf_gptq.md), and gguf_solver "imatrix" is llama.cpp's importance-weighted rounding
with our calibration statistics (the ablation without error compensation). NF4 grids are fitted
up front (static) because double quantization couples the scales of many blocks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from lowbit.calibration.hessian import HessianObserver
from lowbit.formats import IntAffineGrid, QuantizedTensor
from lowbit.formats.ggml_tensor import GGMLGrid, GGMLTensor
from lowbit.methods.base import Method, register_method
from lowbit.methods.gptq_solver import HessianFactor, gptq_by_rows, gptq_on_grid, hessian_factor, order_block_for
from lowbit.options import options_of

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


def importance_from_hessian(H: torch.Tensor) -> torch.Tensor:
    """llama.cpp's imatrix semantics, the mean squared input per column: diag(H) / 2 for
    H = 2 X^T X / n (calibration/hessian.py)."""
    return (torch.diag(H).double() / 2).clamp_min(0).float()


def column_plan(grid, o: GPTQOptions) -> tuple[bool, str]:
    """(act_order, fit) for gptq_on_grid from the options, on this grid."""
    if grid.kind == "ggml":  # measured per block size (docs/design/gguf_gptq.md)
        order = o.ggml_order
        if order == "auto":
            order = "static" if grid.block == 32 else "group"
        return {"static": (True, "static"), "group": (True, "block"), "none": (False, "block")}[order]
    if o.static_groups or grid.block == 0:
        return o.act_order, "static"
    return o.act_order, "reordered" if o.act_order else "block"


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, symmetric: bool, group_size: int,
                  clip: str = "minmax", damp_percent: float = 0.01, block_size: int = 128,
                  act_order: bool = False, static_groups: bool = False, scale_dtype: str | None = None,
                  dtype: torch.dtype = torch.float32, factor: HessianFactor | None = None) -> QuantizedTensor:
    """GPTQ on an integer affine grid (the classic case): W (out, in), H (in, in). The solve runs
    in `dtype` (float32; the inverse Hessian is formed in float64); scales are rounded to
    `scale_dtype` (what the output format stores) as each grid is fitted."""
    grid = IntAffineGrid(bits, group_size, symmetric, clip, scale_dtype, dtype)
    o = GPTQOptions(act_order=act_order, static_groups=static_groups)
    act, fit = column_plan(grid, o)
    return gptq_on_grid(W, H, grid, act_order=act, fit=fit, damp_percent=damp_percent,
                        block_size=block_size, dtype=dtype, factor=factor)


def gptq_ggml(W: torch.Tensor, H: torch.Tensor, qtype, damp_percent: float = 0.01,
              block_size: int = 256, order: str = "auto") -> GGMLTensor:
    """GPTQ on llama.cpp's block grid of `qtype` (order: auto | group | none | static)."""
    grid = GGMLGrid(qtype)
    if grid.is_float:
        return grid.rtn(W)
    act, fit = column_plan(grid, GPTQOptions(ggml_order=order))
    return gptq_on_grid(W, H, grid, act_order=act, fit=fit, damp_percent=damp_percent, block_size=block_size,
                        importance=importance_from_hessian(H))


@register_method
class GPTQ(Method):
    name = "gptq"
    needs_calibration = True
    options = GPTQOptions
    auto_clip = "mse"

    def observer(self, module, spec):
        return HessianObserver(module.in_features, module.weight.device)

    def quantize(self, W, grid, spec, observer=None):
        if getattr(grid, "is_float", False):  # a GGUF tensor kept in F16/F32: nothing to choose
            return grid.rtn(W)
        if observer is None or observer.n == 0:
            log.warning("no calibration inputs reached this layer: using round-to-nearest")
            return grid.rtn(W)
        o = options_of(GPTQOptions, spec.method_args)
        if o.gguf_solver == "imatrix":
            return grid.rtn(W, importance_from_hessian(observer.H))
        act_order, fit = column_plan(grid, o)
        order_block = order_block_for(grid, fit, act_order)
        key = (o.damp_percent, act_order, order_block)
        importance = importance_from_hessian(observer.H) if grid.takes_importance else None
        factors = observer.__dict__.setdefault("gptq_factors", {})  # shared input, shared factor
        if key not in factors:
            # the walk marks the observer's last Linear: H is then handed over and freed as soon as
            # the factor's first copy exists (a 5632-wide input: 0.13 GB less at the peak)
            last = getattr(observer, "last_use", False)
            factors[key] = hessian_factor(observer.take_H() if last else observer.H, o.damp_percent, act_order,
                                          order_block=order_block, own=last)
        return gptq_by_rows(W, None, grid, act_order=act_order, fit=fit, damp_percent=o.damp_percent,
                            block_size=o.block_size or grid.solve_block, factor=factors[key],
                            importance=importance)
