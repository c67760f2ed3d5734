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
from typing import Callable

import torch

from lowbit.calibration.hessian import HessianObserver
from lowbit.formats import QuantizedTensor, column_groups, fit_grid, quantize_codes, quantize_rtn
from lowbit.methods.base import Method, register_method

log = logging.getLogger(__name__)


def _inverse_cholesky(H: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp I)^-1 = U^T U, formed in float64, raising damp if
    H is not positive definite.

    With J the reversal permutation, J H J = M M^T (M lower) gives H = R R^T for the upper
    R = J M J, so H^-1 = R^-T R^-1 and U = R^-1 = J M^-1 J: one Cholesky and one in-place
    triangular inverse. Against Cholesky, inverse, Cholesky again this is ~3x faster and
    holds two float64 matrices instead of five (0.5 GB, not 1.3 GB, for a 5632-wide input)."""
    n = H.shape[0]
    Hr = H.double().flip(0, 1).contiguous()  # J H J
    mean_diag = float(Hr.diagonal().mean())
    damp, added = damp_percent, 0.0
    for _ in range(6):
        Hr.diagonal().add_(damp * mean_diag - added)
        added = damp * mean_diag
        M, info = torch.linalg.cholesky_ex(Hr)
        if int(info) == 0:
            del Hr
            inv = torch.eye(n, dtype=M.dtype, device=M.device)
            torch.linalg.solve_triangular(M, inv, upper=False, out=inv)  # M^-1, in place
            del M
            if damp != damp_percent:
                log.warning("Hessian needed dampening %.3g (asked %.3g)", damp, damp_percent)
            return inv.flip(0, 1)
        del M
        damp *= 10
    raise RuntimeError("Hessian is not positive definite even with strong dampening")


def _live_hessian(H: torch.Tensor, dtype: torch.dtype = torch.float32):
    """(copy of H in `dtype` with H[j, j] = 1 for dead inputs, the dead-input mask): inputs
    always zero in the calibration data, whose weights do not matter."""
    H = H.to(dtype).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    return H, dead


def prepare(W: torch.Tensor, H: torch.Tensor, dtype: torch.dtype = torch.float32):
    """Copies of W (out, in) and H (in, in) in `dtype` with dead inputs zeroed in W and
    given H[j, j] = 1."""
    H, dead = _live_hessian(H, dtype)
    W = W.to(dtype).clone()
    W[:, dead] = 0
    return W, H


@dataclass
class HessianFactor:
    """What GPTQ derives from a Hessian alone: its dead inputs, the act-order permutation and
    the upper Cholesky factor of the dampened inverse in that order. Linears that read the
    same input (q/k/v, gate/up) share one, so it is computed once per input."""
    dead: torch.Tensor            # (in,) bool
    perm: torch.Tensor | None     # processing order (act-order), None for natural order
    U: torch.Tensor               # (in, in)


def hessian_factor(H: torch.Tensor, damp_percent: float = 0.01, act_order: bool = False,
                   dtype: torch.dtype = torch.float32) -> HessianFactor:
    H, dead = _live_hessian(H, dtype)
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        H = H[perm][:, perm]
    return HessianFactor(dead, perm, _inverse_cholesky(H, damp_percent).to(dtype))


def solve_columns(WT: torch.Tensor, U: torch.Tensor, block_size: int,
                  round_column: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """GPTQ's column loop with lazy block updates, for any grid.

    WT (in, out): the weights in processing order, transposed so that column j of W is the
    contiguous row j (the rank-1 update of the rows still to come is then one BLAS call:
    elementwise torch ops of that size go through OpenMP and stall when a core is busy);
    updated in place. U (in, in): upper Cholesky factor of H^-1 in the same order.
    round_column(j, WT) -> (out,) the quantized values of row j; it may fit a grid on rows
    WT[j:j + g] first, which hold every update so far when block_size is a multiple of g
    and j is a multiple of g. Returns QT (in, out), the quantized rows."""
    inp, out = WT.shape
    QT = torch.empty_like(WT)
    for i1 in range(0, inp, block_size):
        i2 = min(i1 + block_size, inp)
        E1 = torch.empty(i2 - i1, out, dtype=WT.dtype)  # scaled errors of the block's columns
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            w = WT[j]
            q = round_column(j, WT)
            QT[j] = q
            err = (w - q) / U1[i, i]
            E1[i] = err
            if i + 1 < i2 - i1:
                WT[j + 1:i2].addmm_(U1[i, i + 1:, None], err[None, :], alpha=-1)
        if i2 < inp:
            WT[i2:].addmm_(U[i1:i2, i2:].T, E1, alpha=-1)
    return QT


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
        a = spec.method_args
        damp, act_order = a.get("damp_percent", 0.01), a.get("act_order", True)
        factors = observer.__dict__.setdefault("gptq_factors", {})  # shared input, shared factor
        if (damp, act_order) not in factors:
            factors[damp, act_order] = hessian_factor(observer.H, damp, act_order)
        return gptq_quantize(W, observer.H, spec.bits, spec.symmetric, spec.group_size, clip,
                             damp_percent=damp, block_size=a.get("block_size", 128), act_order=act_order,
                             static_groups=a.get("static_groups", True), scale_dtype=spec.scale_dtype,
                             factor=factors[damp, act_order])
