"""GPTQ's solver, for any grid (Frantar et al., 2022): the Hessian factor (dead inputs,
act-order permutation, upper Cholesky factor of the dampened inverse), the column loop with
lazy block updates, and gptq_on_grid, which runs them on whatever grid it is handed
(formats/grid.py): integer affine, llama.cpp's blocks, NF4, and any grid added later."""
from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger(__name__)


FLOAT64_FACTOR_MAX = 4096  # inputs up to this wide get a float64 factor; wider ones float32


def inverse_cholesky(H: torch.Tensor, damp_percent: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp I)^-1 = U^T U, raising damp if H is not positive
    definite.

    With J the reversal permutation, J H J = M M^T (M lower) gives H = R R^T for the upper
    R = J M J, so H^-1 = R^-T R^-1 and U = R^-1 = J M^-1 J: one Cholesky and one in-place
    triangular inverse.
    dtype None: float64 for inputs up to FLOAT64_FACTOR_MAX wide; wider ones in float32, as
    the reference GPTQ code does for every width (a float64 factor of a 5632-wide input holds
    0.5 GB, twice a float32 one), falling back to float64 where float32 finds H not positive
    definite, before more dampening."""
    return _factor_of_reversed([H.flip(0, 1)], damp_percent, dtype)  # flip: a copy of H, ours to overwrite


def _factor_of_reversed(box: list, damp_percent: float, dtype: torch.dtype | None) -> torch.Tensor:
    """inverse_cholesky of H given as J H J, handed over in a one-item list (the list holds the
    only reference). The Cholesky factor, its triangular inverse and the final reversal are all
    written over that one matrix: an n x n matrix at a time, not two (a 5632-wide input: 0.13 GB
    less at the peak)."""
    n = box[0].shape[0]
    if dtype is None:
        dtype = torch.float64 if n <= FLOAT64_FACTOR_MAX else torch.float32
    A = box.pop().to(dtype)
    mean_diag = float(A.diagonal().double().mean())
    backup = _Backup(A)  # the in-place factor overwrites A; a retry with more dampening needs it
    damp = damp_percent
    for _ in range(6):
        A.diagonal().add_(damp * mean_diag)
        M, info = _cholesky_in_place(A)
        if info != 0 and A.dtype != torch.float64:  # float32 rounding, not H: retry wider
            A = backup.load().double()
            A.diagonal().add_(damp * mean_diag)
            M, info = _cholesky_in_place(A)
        if info == 0:
            backup.close()
            _invert_lower_in_place(M)
            # A's rows hold M^-1 transposed; U = J M^-1 J is that, flipped and transposed
            _flip_in_place(A)
            _transpose_in_place(A)
            if damp != damp_percent:
                log.warning("Hessian needed dampening %.3g (asked %.3g)", damp, damp_percent)
            return A
        A = backup.load().to(A.dtype)
        damp *= 10
    backup.close()
    raise RuntimeError("Hessian is not positive definite even with strong dampening")


IN_MEMORY_BACKUP = 32 << 20  # bytes: a larger matrix's backup waits in a temporary file


class _Backup:
    """A copy of a matrix for the rare retry: in memory when small, else in a temporary file
    (not held in RAM: the point of factoring in place)."""

    def __init__(self, A: torch.Tensor):
        self.shape, self.dtype = A.shape, A.dtype
        self.copy = self.file = None
        if A.numel() * A.element_size() <= IN_MEMORY_BACKUP:
            self.copy = A.clone()
        else:
            self.file = tempfile.TemporaryFile()
            self.file.write(memoryview(A.contiguous().numpy()).cast("B"))

    def load(self) -> torch.Tensor:
        if self.copy is not None:
            return self.copy.clone()
        out = torch.empty(self.shape, dtype=self.dtype)
        self.file.seek(0)
        self.file.readinto(memoryview(out.numpy()).cast("B"))
        return out

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.copy = self.file = None


def _cholesky_in_place(A: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Lower Cholesky factor M of the symmetric A, written over A's storage (info != 0: not
    positive definite). A column-major view is factored where it lies; a row-major one would
    be copied first."""
    M = A.mT
    info = torch.empty((), dtype=torch.int32)
    torch.linalg.cholesky_ex(M, out=(M, info))
    return M, int(info)


INVERSE_BLOCK = 256


def _invert_lower_in_place(L: torch.Tensor) -> None:
    """L <- L^-1 for lower-triangular L, a block of columns at a time from the last (the
    blocked algorithm of LAPACK's trtri): with the trailing block already inverted,
    [[A, 0], [B, C]]^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]. Scratch: one block of columns."""
    n, bs = L.shape[0], INVERSE_BLOCK
    for j in reversed(range(0, n, bs)):
        j2 = min(j + bs, n)
        D = L[j:j2, j:j2]
        D_inv = torch.linalg.solve_triangular(D, torch.eye(j2 - j, dtype=L.dtype), upper=False)
        if j2 < n:
            B = L[j2:, j:j2]
            X = torch.empty(n - j2, j2 - j, dtype=L.dtype)
            for r in range(j2, n, bs):  # C^-1 B, over C^-1's lower triangle only
                r2 = min(r + bs, n)
                torch.mm(L[r:r2, j2:r2], B[:r2 - j2], out=X[r - j2:r2 - j2])
            torch.mm(X, D_inv.neg_(), out=B)  # D_inv is negated here, and set right below
            D_inv.neg_()
        D.copy_(D_inv)


def _flip_in_place(A: torch.Tensor, rows: int = 256) -> None:
    """A <- A.flip(0, 1), swapping blocks of rows from both ends."""
    n = A.shape[0]
    half = n // 2
    for a in range(0, half, rows):
        b = min(a + rows, half)
        top = A[a:b].flip(0, 1)
        A[a:b] = A[n - b:n - a].flip(0, 1)
        A[n - b:n - a] = top
    if n % 2:
        A[half] = A[half].flip(0)


def _transpose_in_place(A: torch.Tensor, bs: int = 256) -> None:
    """A <- A.T for a square A, swapping blocks across the diagonal."""
    n = A.shape[0]
    for a in range(0, n, bs):
        b = min(a + bs, n)
        A[a:b, a:b] = A[a:b, a:b].T.clone()
        for c in range(b, n, bs):
            d = min(c + bs, n)
            upper = A[a:b, c:d].clone()
            A[a:b, c:d] = A[c:d, a:b].T
            A[c:d, a:b] = upper.T


@dataclass
class HessianFactor:
    """What GPTQ derives from a Hessian alone: its dead inputs, the act-order permutation and
    the upper Cholesky factor of the dampened inverse in that order. Linears that read the
    same input (q/k/v, gate/up) share one, so it is computed once per input."""
    dead: torch.Tensor            # (in,) bool
    perm: torch.Tensor | None     # processing order (act-order), None for natural order
    U: torch.Tensor               # (in, in)


def column_order(d: torch.Tensor, order_block: int = 0) -> torch.Tensor:
    """Act-order: columns by decreasing Hessian diagonal d, over the whole row (order_block 0)
    or inside each block of order_block contiguous columns (a block grid keeps its layout)."""
    if order_block <= 0:
        return torch.argsort(d, descending=True, stable=True)
    starts = range(0, d.numel(), order_block)  # a last, partial block is ordered on its own
    return torch.cat([s + torch.argsort(d[s:s + order_block], descending=True, stable=True) for s in starts])


def hessian_factor(H: torch.Tensor, damp_percent: float = 0.01, act_order: bool = False,
                   dtype: torch.dtype = torch.float32, order_block: int = 0, *, own: bool = False) -> HessianFactor:
    """own: H is handed over (HessianObserver.take_H): it is permuted and factored where it lies
    instead of copied."""
    d = torch.diag(H).to(dtype)
    dead = d == 0
    perm = column_order(d.masked_fill(dead, 1), order_block) if act_order else None
    rev = (perm if perm is not None else torch.arange(H.shape[0])).flip(0)
    factor_dtype = torch.float64 if dtype == torch.float64 else None  # a float64 solve keeps its factor
    # J P^T H P J with H[j, j] = 1 for dead inputs (always zero in the calibration data, their
    # weights do not matter)
    Hr = H.to(dtype, copy=not own)
    del H
    _permute_in_place(Hr, rev)
    Hr.diagonal()[dead[rev]] = 1
    box = [Hr]
    del Hr
    U = _factor_of_reversed(box, damp_percent, factor_dtype)
    return HessianFactor(dead, perm, U.to(dtype))


def _permute_in_place(A: torch.Tensor, order: torch.Tensor) -> None:
    """A <- A[order][:, order], following the permutation's cycles with one row of scratch."""
    order = order.tolist()
    for view in (A, A.T):  # rows, then columns (the rows of the transposed view)
        seen = [False] * len(order)
        for start, src in enumerate(order):
            if seen[start] or src == start:
                continue
            first, i = view[start].clone(), start
            while True:
                seen[i] = True
                src = order[i]
                if src == start:
                    view[i] = first
                    break
                view[i] = view[src]
                i = src


def solve_columns(WT: torch.Tensor, U: torch.Tensor, block_size: int,
                  round_column: Callable[[int, torch.Tensor], torch.Tensor], keep: bool = True) -> torch.Tensor | None:
    """GPTQ's column loop with lazy block updates, for any grid.

    WT (in, out): the weights in processing order, transposed so that column j of W is the
    contiguous row j (the rank-1 update of the rows still to come is then one BLAS call:
    elementwise torch ops of that size go through OpenMP and stall when a core is busy);
    updated in place. U (in, in): upper Cholesky factor of H^-1 in the same order.
    round_column(j, WT) -> (out,) the quantized values of row j; it may fit a grid on rows
    WT[j:j + g] first, which hold every update so far when block_size is a multiple of g
    and j is a multiple of g. Returns QT (in, out), the quantized rows (keep=False: None, for a
    caller that keeps the codes itself and need not hold a second copy of the matrix)."""
    inp, out = WT.shape
    QT = torch.empty_like(WT) if keep else None
    for i1 in range(0, inp, block_size):
        i2 = min(i1 + block_size, inp)
        E1 = torch.empty(i2 - i1, out, dtype=WT.dtype)  # scaled errors of the block's columns
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            w = WT[j]
            q = round_column(j, WT)
            if keep:
                QT[j] = q
            err = (w - q) / U1[i, i]
            E1[i] = err
            if i + 1 < i2 - i1:
                WT[j + 1:i2].addmm_(U1[i, i + 1:, None], err[None, :], alpha=-1)
        if i2 < inp:
            WT[i2:].addmm_(U[i1:i2, i2:].T, E1, alpha=-1)
    return QT


FITS = ("static", "block", "reordered")


@contextlib.contextmanager
def _threads(n: int | None):
    """The column loop is thousands of small calls: on grids that round a column with numpy, a
    second thread only waits for the other core, which another process may hold."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def effective_fit(grid, fit: str, act_order: bool) -> str:
    """The fit a grid allows: static for grids fitted up front only or one grid per row;
    "reordered" (groups follow act-order, a g_idx) only where the grid records one."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    if grid.static_only or grid.block == 0:
        return "static"
    if fit == "reordered" and not act_order:
        return "block"
    if fit == "reordered" and not grid.reorderable:
        raise ValueError("this grid's blocks hold contiguous columns: use fit 'block' or 'static'")
    return fit


def order_block_for(grid, fit: str, act_order: bool) -> int:
    """The block act-order stays inside on this grid and fit (0: the whole row), the key of the
    HessianFactor a solve needs."""
    return grid.block if effective_fit(grid, fit, act_order) == "block" else 0


def gptq_on_grid(W: torch.Tensor, H: torch.Tensor, grid, *, act_order: bool = True, fit: str = "static",
                 damp_percent: float = 0.01, block_size: int = 128, dtype: torch.dtype = torch.float32,
                 factor: HessianFactor | None = None, importance: torch.Tensor | None = None):
    """GPTQ of W (out, in) with Hessian H (in, in) on `grid`; returns the grid's quantized tensor.

    fit "static": every grid fitted up front from the unquantized weights (GPTQ's static
    groups; with act_order the columns still go by decreasing diag H); "block": each block's
    grid fitted when the loop reaches it, on the weights as updated so far (act_order then
    orders columns inside each block, so the grid keeps its layout); "reordered": groups are
    consecutive columns in act-order, recorded as g_idx (integer grids). importance (in,):
    per-column weights for grids that fit with them (llama.cpp's imatrix semantics).
    factor: hessian_factor(H, damp_percent, act_order, dtype, order_block) when already known."""
    out, inp = W.shape
    fit = effective_fit(grid, fit, act_order)
    G = grid.block if grid.block else inp
    if factor is None:
        factor = hessian_factor(H, damp_percent, act_order, dtype, order_block_for(grid, fit, act_order))
    perm = factor.perm if factor.perm is not None else torch.arange(inp)
    if grid.block:  # lazy blocks hold whole grid blocks: a grid is fitted on fully updated weights
        block_size = max(G, (block_size // G) * G)
    # the working copy, transposed so that column j of W is the contiguous row j (one gather,
    # one (in, out) matrix); dead inputs' weights do not matter
    if fit == "static":  # grids from the weights in their natural order
        Wn = W.to(dtype)
        if bool(factor.dead.any()):
            Wn = Wn.clone()
            Wn[:, factor.dead] = 0
        fitted = grid.fit(Wn, importance)
        del Wn
    else:
        fitted = grid.empty(out, inp)
    WT = W.T.to(dtype)[perm].contiguous()
    WT[factor.dead[perm]] = 0
    codes = torch.zeros(out, inp, dtype=torch.uint8)
    order = perm.tolist()

    def round_column(j: int, WT: torch.Tensor) -> torch.Tensor:
        if fit != "static" and j % G == 0:
            b, cols = j // G, perm[j:j + G]
            if fit == "block":  # the block's columns back in their natural order
                Wb = torch.empty(out, cols.numel(), dtype=WT.dtype)
                Wb[:, cols - j] = WT[j:j + G].T
                imp = importance[j:j + G] if importance is not None else None
                grid.fit_block(fitted, Wb, b, torch.arange(j, j + cols.numel()), imp)
            else:
                grid.fit_block(fitted, WT[j:j + G].T, b, cols)
        c = order[j]
        q, value = grid.round_column(fitted, c, WT[j])
        codes[:, c] = q
        return value.to(WT.dtype)

    with _threads(grid.threads):
        solve_columns(WT, factor.U, block_size, round_column, keep=False)
    del WT
    return grid.encode(fitted, codes, reordered=fit == "reordered")


ROW_CHUNK = 1 << 24  # weights per GPTQ solve of a very large matrix (a 49k-token head: 8192 rows at a time)


def gptq_by_rows(W: torch.Tensor, H: torch.Tensor, grid, **kw):
    """gptq_on_grid on blocks of rows of a matrix with more than ROW_CHUNK weights, joined: output
    rows are solved independently (they share only H), so on a grid whose rows are independent
    too this bounds the working memory to a block of rows. Other grids (NF4's double quantization,
    a per-tensor scale) get one solve."""
    out, inp = W.shape
    if out * inp <= ROW_CHUNK or not grid.rows_independent:
        return gptq_on_grid(W, H, grid, **kw)
    if kw.get("factor") is None:  # computed once for every block of rows
        act_order = kw.get("act_order", True)
        kw["factor"] = hessian_factor(H, kw.get("damp_percent", 0.01), act_order, kw.get("dtype", torch.float32),
                                      order_block_for(grid, kw.get("fit", "static"), act_order))
    rows = max(1, ROW_CHUNK // inp)
    parts = []
    for r in range(0, out, rows):
        part = gptq_on_grid(W[r:r + rows], H, grid, **kw)
        part.drop_decoded()  # join_rows keeps codes only: a 49k-token head's floats would be 0.4 GB
        parts.append(part)
    return grid.join_rows(parts)
