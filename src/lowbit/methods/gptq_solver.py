"""GPTQ's solver, for any grid (Frantar et al., 2022): the Hessian factor (dead inputs,
act-order permutation, upper Cholesky factor of the dampened inverse) and the column loop with
lazy block updates. methods/gptq.py runs it on integer grids, methods/ggml_grid.py on
llama.cpp's block grids; a method on another grid hands solve_columns its own rounding."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger(__name__)


def inverse_cholesky(H: torch.Tensor, damp_percent: float) -> torch.Tensor:
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


def live_hessian(H: torch.Tensor, dtype: torch.dtype = torch.float32):
    """(copy of H in `dtype` with H[j, j] = 1 for dead inputs, the dead-input mask): inputs
    always zero in the calibration data, whose weights do not matter."""
    H = H.to(dtype).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    return H, dead


def prepare(W: torch.Tensor, H: torch.Tensor, dtype: torch.dtype = torch.float32):
    """Copies of W (out, in) and H (in, in) in `dtype` with dead inputs zeroed in W and
    given H[j, j] = 1."""
    H, dead = live_hessian(H, dtype)
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
    H, dead = live_hessian(H, dtype)
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        H = H[perm][:, perm]
    return HessianFactor(dead, perm, inverse_cholesky(H, damp_percent).to(dtype))


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
