"""llama.cpp's scale searches (ggml/src/ggml-quants.c), vectorized over blocks.

Every array here is element-major, (n, B): the n values of a block run down axis 0 and there is
one block per column. np.add.reduce(axis=0) then adds in the same order as llama.cpp's loops, and
every product is written in C's left-to-right order, so float32 results agree bit for bit (the
reference build has no FMA contraction). Loops run only over candidate scales and refinement
passes, never over blocks.

  symmetric_search  make_qx_quants (rmse_type 1)   codes 0..2*nmax-1, value = code - nmax
  q3_search         make_q3_quants (do_rmse)       same convention, nmax = 4, weights x*x
  affine_search     make_qkx2_quants / make_qkx3_quants: x ~ scale * code - the_min
  scale_search      make_qp_quants: positive values (sub-block scales) on 0..nmax

plus the small pieces every block type shares (fp16 storage, BlockCodec).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

F = np.float32
GROUP_MAX_EPS = F(1e-15)


def seqsum(a: np.ndarray) -> np.ndarray:
    """Sum over axis 0 in index order. numpy reduces an outer axis row by row, except when a row
    is tiny (it then sums pairwise), so narrow arrays are added explicitly."""
    if a.shape[1] < 8:
        acc = a[0].copy()
        for row in a[1:]:
            acc += row
        return acc
    return np.add.reduce(a, axis=0)


def fp16_bits(v: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 (round to nearest even, too large -> inf) as bytes, (..., 2) uint8."""
    with np.errstate(over="ignore"):
        half = np.asarray(v, dtype=F).astype(np.float16)
    return half.view(np.uint8).reshape(*np.shape(v), 2)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """llama.cpp's nearest_int bit trick, including what it returns out of its +-2**22 range
    (refinement steps divide by sums that can be tiny). Float32 array of integers."""
    bits = (np.asarray(v, dtype=F) + F(12582912.0)).view(np.int32)
    return ((bits & 0x7FFFFF) - 0x400000).astype(F)


def wrap_u8(v: np.ndarray) -> np.ndarray:
    """An int stored into a C uint8_t (codes are uint8 in make_qp_quants)."""
    return v if v.min(initial=0) >= 0 else np.mod(v, F(256))


def _first_zero(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Where the extreme m is zero, the zero that came first: a strict-< (or >) scan keeps the
    first of equal extremes, and +0 == -0, so this decides the sign of a zero extreme."""
    zero = np.flatnonzero(m == 0)
    if zero.size:
        sub = x[:, zero]
        m[zero] = sub[np.argmax(sub == 0, axis=0), np.arange(zero.size)]
    return m


def first_min(x: np.ndarray) -> np.ndarray:
    """Minimum over axis 0 as llama.cpp's scan finds it (sign of a zero minimum included)."""
    return _first_zero(x, x.min(axis=0))


def first_max(x: np.ndarray) -> np.ndarray:
    """Maximum over axis 0 as llama.cpp's scan finds it."""
    return _first_zero(x, x.max(axis=0))


def signed_absmax(x: np.ndarray):
    """(value, |value|) of the first largest magnitude down axis 0; +0 for an all-zero block
    (llama.cpp's scan starts from max = 0 and never replaces it)."""
    ax = np.abs(x)
    i = ax.argmax(axis=0)
    cols = np.arange(x.shape[1])
    big, amax = x[i, cols], ax[i, cols]
    big[amax == 0] = 0
    return big, amax


def _clip(v, lo, hi):
    return np.clip(v, lo, hi, out=v)   # in place; np.clip is much faster than maximum+minimum


def symmetric_search(x: np.ndarray, nmax: int, w: np.ndarray | None = None):
    """make_qx_quants(rmse_type=1): weighted least squares over 19 trial scales.
    Returns (scale (B,), codes (n, B)); all-zero blocks get scale 0 and codes 0.
    Codes are rebuilt once from each block's winning trial scale (same float ops as the trial)."""
    big, amax = signed_absmax(x)
    live = ~(amax < GROUP_MAX_EPS)
    if w is None:
        w = x * x
    wx = w * x
    l = np.empty_like(x)
    t = np.empty_like(x)

    def codes(iscale, out):
        np.multiply(iscale, x, out=out)
        return _clip(np.rint(out, out=out), F(-nmax), F(nmax - 1))

    def trial(iscale):
        codes(iscale, l)
        np.multiply(wx, l, out=t)
        slx = seqsum(t)
        np.multiply(w, l, out=t)
        np.multiply(t, l, out=t)
        return slx, seqsum(t)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        best_iscale = F(-nmax) / big
        sumlx, suml2 = trial(best_iscale)
        scale = np.where(suml2 != 0, sumlx / suml2, F(0))
        best = scale * sumlx
        for k in range(-9, 10):
            if k == 0:
                continue
            iscale = -(F(nmax) + F(0.1) * F(k)) / big
            slx, sl2 = trial(iscale)
            take = (sl2 > 0) & (slx * slx > best * sl2)
            best_iscale = np.where(take, iscale, best_iscale)
            scale = np.where(take, slx / sl2, scale)
            best = np.where(take, scale * slx, best)
        L = codes(best_iscale, l)
    L += F(nmax)
    L[:, ~live] = 0
    scale[~live] = 0
    return scale, L


def q3_search(x: np.ndarray, nmax: int = 4):
    """make_q3_quants(do_rmse=true): round at -nmax/max, then up to 5 passes of one-value-at-a-time
    moves that raise sumlx**2/suml2 (weights x*x). A pass that changes nothing leaves the state
    as is, so running all 5 for every block equals llama.cpp's early exit."""
    big, amax = signed_absmax(x)
    live = ~(amax < GROUP_MAX_EPS)
    w = x * x
    wx = w * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        L = _clip(np.rint((F(-nmax) / big) * x), F(-nmax), F(nmax - 1))
        sumlx = seqsum(wx * L)
        suml2 = seqsum(w * L * L)
        for _ in range(5):
            for i in range(x.shape[0]):
                Li = L[i]
                slx = sumlx - wx[i] * Li
                sl2 = suml2 - w[i] * Li * Li
                new = _clip(nearest_int(x[i] * sl2 / slx), F(-nmax), F(nmax - 1))
                slx_n = slx + wx[i] * new
                sl2_n = sl2 + w[i] * new * new
                take = ((slx > 0) & (new != Li) & (sl2_n > 0)
                        & (slx_n * slx_n * suml2 > sumlx * sumlx * sl2_n))
                L[i] = np.where(take, new, Li)
                sumlx = np.where(take, slx_n, sumlx)
                suml2 = np.where(take, sl2_n, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F(0))
    L += F(nmax)
    L[:, ~live] = 0
    scale[~live] = 0
    return scale, L


def affine_search(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float,
                  nstep: int, use_mad: bool):
    """make_qkx2_quants / make_qkx3_quants: start from the min..max grid, then try nstep+1 wider
    or narrower grids, each refit by weighted least squares for (scale, min <= 0); keep the one
    with the lowest weighted error (|e| if use_mad else e**2). Each trial grid starts at the
    min of the best fit so far, as in llama.cpp.
    Returns (scale, the_min, codes): x ~ scale * code - the_min, the_min = -min >= 0."""
    lo = first_min(x)
    hi = x.max(axis=0)
    sum_w = seqsum(w)
    sum_x = seqsum(w * x)
    lo = np.where(lo > 0, F(0), lo)
    flat = ~(hi > lo)
    xm = x - lo                   # x minus the current min (llama.cpp's x[i] - min)
    l = np.empty_like(x)
    t = np.empty_like(x)
    t2 = np.empty_like(x)

    def codes(iscale, out):
        np.multiply(iscale, xm, out=out)
        return _clip(np.rint(out, out=out), F(0), F(nmax))

    def error(scale, codes, mn):
        np.multiply(scale, codes, out=t)
        np.add(t, mn, out=t)
        np.subtract(t, x, out=t)
        if use_mad:
            np.abs(t, out=t)
        else:
            np.multiply(t, t, out=t)
        np.multiply(t, w, out=t)
        return seqsum(t)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F(nmax) / (hi - lo)
        scale = F(1) / iscale
        best = error(scale, codes(iscale, l), lo)
        # the winning trial per block: its iscale and the min its codes were rounded from
        win_iscale, win_lo = iscale, lo
        for k in range(nstep + 1):
            # each trial starts from the min of the best fit so far, as llama.cpp's loop does
            iscale = (F(rmin) + F(rdelta) * F(k) + F(nmax)) / (hi - lo)
            codes(iscale, l)
            np.multiply(w, l, out=t)
            s_l = seqsum(t)
            np.multiply(t, x, out=t2)
            s_xl = seqsum(t2)
            np.multiply(t, l, out=t)
            s_l2 = seqsum(t)
            D = sum_w * s_l2 - s_l * s_l
            t_scale = (sum_w * s_xl - sum_x * s_l) / D
            t_min = (s_l2 * sum_x - s_l * s_xl) / D
            pos = t_min > 0
            t_min = np.where(pos, F(0), t_min)
            t_scale = np.where(pos, s_xl / s_l2, t_scale)
            cur = error(t_scale, l, t_min)
            take = (D > 0) & (cur < best)
            if take.any():
                win_iscale = np.where(take, iscale, win_iscale)
                win_lo = np.where(take, lo, win_lo)
                best = np.where(take, cur, best)
                scale = np.where(take, t_scale, scale)
                lo = np.where(take, t_min, lo)
                np.subtract(x, lo, out=xm)
        np.subtract(x, win_lo, out=xm)
        L = codes(win_iscale, l)
    scale = np.where(flat, F(0), scale)
    L[:, flat] = 0
    return scale, -lo, L


def scale_search(x: np.ndarray, nmax: int, w: np.ndarray):
    """make_qp_quants: quantize non-negative values (a super-block's sub-scales or sub-mins) to
    0..nmax with one float scale: 9 trial scales by weighted error, then 5 refinement passes.
    Codes follow C's uint8 storage (a negative code wraps; only negative inputs make one).
    Returns (scale (B,), codes (n, B))."""
    mx = np.maximum(x.max(axis=0), F(0))
    live = ~(mx < GROUP_MAX_EPS)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F(nmax) / mx
        scale = F(1) / iscale
        diff = x - scale * wrap_u8(nearest_int(iscale * x))
        best = seqsum(w * diff * diff)
        for k in range(-4, 5):
            if k == 0:
                continue
            isc = (F(0.1) * F(k) + F(nmax)) / mx
            diff = x - (F(1) / isc) * np.minimum(nearest_int(isc * x), F(nmax))
            mse = seqsum(w * diff * diff)
            better = mse < best
            best = np.where(better, mse, best)
            iscale = np.where(better, isc, iscale)
        l = np.minimum(nearest_int(iscale * x), F(nmax))
        wx = w * x
        sumlx = seqsum(wx * l)
        suml2 = seqsum(w * l * l)
        L = wrap_u8(l)            # may be l itself; l is not used again
        for _ in range(5):
            for i in range(x.shape[0]):
                Li = L[i]
                slx = sumlx - wx[i] * Li
                sl2 = suml2 - w[i] * Li * Li
                new = np.minimum(nearest_int(x[i] * sl2 / slx), F(nmax))
                slx_n = slx + wx[i] * new
                sl2_n = sl2 + w[i] * new * new
                take = ((slx > 0) & (sl2 > 0) & (new != Li)
                        & (slx_n * slx_n * suml2 > sumlx * sumlx * sl2_n))
                L[i] = np.where(take, wrap_u8(new), Li)
                sumlx = np.where(take, slx_n, sumlx)
                suml2 = np.where(take, sl2_n, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F(0))
    L[:, ~live] = 0
    scale[~live] = 0
    return scale, L


@dataclass(frozen=True)
class BlockCodec:
    """One GGML block type. Blocks are rows of (N, block) arrays; a block's bytes are its header
    (scales, mins: everything chosen per block) OR-ed with its packed codes, whose bit positions
    never overlap."""
    name: str
    block: int
    type_size: int
    qmax: int           # codes are integers 0..qmax
    # (x (rows, cols) float32, importance (cols,) or None) -> header (N, type_size), codes (N, block)
    choose: Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray]]
    pack_codes: Callable[[np.ndarray], np.ndarray]   # codes (N, block) -> (N, type_size), header zero
    # header (N, type_size) -> (scale, offset), each (N, block): value = scale * code - offset
    affine: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
