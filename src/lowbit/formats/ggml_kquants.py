"""GGML k-quants: super-blocks of 256 weights, Q2_K Q3_K Q4_K Q5_K Q6_K.

Each super-block splits into sub-blocks (16 or 32 weights) with their own scale (and min),
stored as small integers times one fp16 super-scale (and super-min). Without importance the
choices are llama.cpp's quantize_row_*_ref; with importance its quantize_* (*_impl) paths,
weighting each weight by importance * sqrt(sigma2 + x**2) (Q6_K: importance alone).
After the sub-scales are quantized, every weight is re-rounded with its final, stored scale,
except in a sub-block whose stored scale is zero, which keeps the search's codes.

Layouts (bytes, gguf-py's names):
  Q2_K  scales:16 (scale | min << 4) qs:64 d:2 dmin:2          value = d*sc*q - dmin*m, q 0..3
  Q3_K  hmask:32 qs:64 scales:12 (6-bit, +32) d:2              value = d*(sc-32)*(q-4), q 0..7
  Q4_K  d:2 dmin:2 scales:12 (6-bit sc and m) qs:128           value = d*sc*q - dmin*m, q 0..15
  Q5_K  d:2 dmin:2 scales:12 qh:32 qs:128                      same, q 0..31
  Q6_K  ql:128 qh:64 scales:16 (int8) d:2                      value = d*sc*(q-32), q 0..63
"""
from __future__ import annotations

import numpy as np

from lowbit.formats.ggml_search import (
    F, BlockCodec, affine_search, fp16_bits, nearest_int, q3_search, scale_search,
    seqsum, signed_absmax, symmetric_search, wrap_u8,
)

QK_K = 256


def _sub(xs: np.ndarray, n: int) -> np.ndarray:
    """(S, 256) super-blocks -> (n, S*256/n) element-major sub-blocks."""
    return np.ascontiguousarray(xs.reshape(-1, n).T)


def _unsub(a: np.ndarray, S: int) -> np.ndarray:
    return np.ascontiguousarray(a.T).reshape(S, QK_K)


def _sigma2(xs: np.ndarray, times: int) -> np.ndarray:
    """times * mean x**2 of each super-block, summed in C order; (S,)."""
    return F(times) * seqsum(np.ascontiguousarray((xs * xs).T)) / F(QK_K)


def _importance_weights(xs, qw_tiles, n, times):
    """importance * sqrt(sigma2 + x**2), element-major (n, S*256/n)."""
    sig = np.repeat(_sigma2(xs, times), QK_K // n)
    x = _sub(xs, n)
    return _sub(qw_tiles, n) * np.sqrt(sig + x * x)


def _tiles(qw: np.ndarray | None, rows: int) -> np.ndarray | None:
    """Per-column importance laid out like the super-blocks: (rows * cols/256, 256)."""
    if qw is None:
        return None
    return np.broadcast_to(qw.reshape(1, -1, QK_K), (rows, qw.size // QK_K, QK_K)).reshape(-1, QK_K)


def _requantize(x, L, d, m, lo, hi):
    """Round each weight again with its sub-block's stored scale d (and min m); sub-blocks whose
    d is zero keep the codes they had. x, L element-major; d, m (B,)."""
    live = d != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        # nearest_int's own result for inf/NaN too (an fp16 super-scale can overflow)
        q = nearest_int((x + m) / d) if m is not None else nearest_int(x / d)
    np.clip(q, lo, hi, out=q)
    return np.where(live, q, L)


# ---- Q4_K / Q5_K: 8 sub-blocks of 32, 6-bit scales and mins

def _pack_scales_6bit(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """(S, 8) uint8 scale and min codes -> the 12 scale bytes, as llama.cpp lays them out."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    out = np.empty((len(ls), 12), np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return out


def _unpack_scales_6bit(q: np.ndarray):
    """get_scale_min_k4 for all 8 sub-blocks: (S, 12) -> sc, m (S, 8) as float32."""
    sc = np.concatenate([q[:, 0:4] & 63, (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([q[:, 4:8] & 63, (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)], axis=1)
    return sc.astype(F), m.astype(F)


def _choose_4k5k(xs, qw, nmax):
    S = len(xs)
    x = _sub(xs, 32)
    if qw is None:
        av = np.sqrt(seqsum(x * x) / F(32))
        w = av + np.abs(x)
        rmin, nstep = (-1.0, 20) if nmax == 15 else (-0.5, 15)
        scales, mins, L = affine_search(x, w, nmax, rmin, 0.1, nstep, False)
        scales, mins = scales.reshape(S, 8), mins.reshape(S, 8)
        max_scale = np.maximum(scales.max(axis=1), F(0))
        max_min = np.maximum(mins.max(axis=1), F(0))
        with np.errstate(divide="ignore"):
            inv_s = np.where(max_scale > 0, F(63) / max_scale, F(0))
            inv_m = np.where(max_min > 0, F(63) / max_min, F(0))
        ls = np.minimum(wrap_u8(np.rint(inv_s[:, None] * scales)), F(63))
        lm = np.minimum(wrap_u8(np.rint(inv_m[:, None] * mins)), F(63))
        d, dmin = max_scale / F(63), max_min / F(63)
    else:
        w = _importance_weights(xs, qw, 32, 2)
        sw = seqsum(w)
        scales, mins, L = affine_search(x, w, nmax, -0.9, 0.05, 36, False)
        sw8 = np.ascontiguousarray(sw.reshape(S, 8).T)
        d, ls = scale_search(np.ascontiguousarray(scales.reshape(S, 8).T), 63, sw8)
        dmin, lm = scale_search(np.ascontiguousarray(mins.reshape(S, 8).T), 63, sw8)
        ls, lm = ls.T, lm.T
        if nmax == 31:   # Q5_K clamps the stored codes, Q4_K does not
            ls, lm = np.minimum(ls, F(63)), np.minimum(lm, F(63))
    header = np.zeros((S, 144 if nmax == 15 else 176), np.uint8)
    header[:, 0:2] = fp16_bits(d)
    header[:, 2:4] = fp16_bits(dmin)
    header[:, 4:16] = _pack_scales_6bit(ls, lm)
    sub_d, sub_m = _affine_4k5k(header)
    L = _requantize(x, L, sub_d.ravel(), sub_m.ravel(), F(0), F(nmax))
    return header, _unsub(L, S).astype(np.uint8)


def _affine_4k5k(header):
    """Per sub-block (S, 8): d*sc and dmin*m."""
    sc, m = _unpack_scales_6bit(header[:, 4:16])
    d = np.ascontiguousarray(header[:, 0:2]).view(np.float16).astype(F)
    dmin = np.ascontiguousarray(header[:, 2:4]).view(np.float16).astype(F)
    return d * sc, dmin * m


def _pack_q4k(codes):
    c = codes.astype(np.uint8).reshape(-1, 4, 2, 32)
    out = np.zeros((len(codes), 144), np.uint8)
    out[:, 16:] = (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(-1, 128)
    return out


def _pack_q5k(codes):
    c = codes.astype(np.uint8).reshape(-1, 4, 2, 32)
    out = np.zeros((len(codes), 176), np.uint8)
    out[:, 48:] = ((c[:, :, 0] & 0xF) | ((c[:, :, 1] & 0xF) << 4)).reshape(-1, 128)
    hi = (c >> 4) & 1                                   # bit 2k of qh[l]: code 64k + l, 2k+1: 64k+32+l
    out[:, 16:48] = (hi.reshape(-1, 8, 32) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(
        axis=1, dtype=np.uint8)
    return out


# ---- Q2_K: 16 sub-blocks of 16, 4-bit scales and mins

def _choose_q2k(xs, qw):
    S = len(xs)
    x = _sub(xs, 16)
    if qw is None:
        scales, mins, L = affine_search(x, np.abs(x), 3, -0.5, 0.1, 15, True)
        scales, mins = scales.reshape(S, 16), mins.reshape(S, 16)
        max_scale = np.maximum(scales.max(axis=1), F(0))
        max_min = np.maximum(mins.max(axis=1), F(0))
        with np.errstate(divide="ignore", invalid="ignore"):
            ls = np.where(max_scale[:, None] > 0, np.rint((F(15) / max_scale)[:, None] * scales), 0)
            lm = np.where(max_min[:, None] > 0, np.rint((F(15) / max_min)[:, None] * mins), 0)
        d = np.where(max_scale > 0, max_scale / F(15), F(0))
        dmin = np.where(max_min > 0, max_min / F(15), F(0))
    else:
        w = _importance_weights(xs, qw, 16, 1)
        sw = seqsum(w)
        scales, mins, L = affine_search(x, w, 3, -0.9, 0.05, 36, False)
        sw16 = np.ascontiguousarray(sw.reshape(S, 16).T)
        d, ls = scale_search(np.ascontiguousarray(scales.reshape(S, 16).T), 15, sw16)
        dmin, lm = scale_search(np.ascontiguousarray(mins.reshape(S, 16).T), 15, sw16)
        ls, lm = ls.T, lm.T
    packed = (ls.astype(np.int64) | (lm.astype(np.int64) << 4)) & 0xFF
    header = np.zeros((S, 84), np.uint8)
    header[:, 0:16] = packed
    header[:, 80:82] = fp16_bits(d)
    header[:, 82:84] = fp16_bits(dmin)
    sub_d, sub_m = _affine_q2k(header)
    L = _requantize(x, L, sub_d.ravel(), sub_m.ravel(), F(0), F(3))
    return header, _unsub(L, S).astype(np.uint8)


def _affine_q2k(header):
    d = np.ascontiguousarray(header[:, 80:82]).view(np.float16).astype(F)
    dmin = np.ascontiguousarray(header[:, 82:84]).view(np.float16).astype(F)
    sc = header[:, 0:16]
    return d * (sc & 0xF).astype(F), dmin * (sc >> 4).astype(F)


def _pack_2bit(codes):
    """Four 2-bit codes per byte: byte l of each 128-half holds codes l, l+32, l+64, l+96."""
    c = codes.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)).reshape(-1, 64)


def _pack_q2k(codes):
    out = np.zeros((len(codes), 84), np.uint8)
    out[:, 16:80] = _pack_2bit(codes)
    return out


# ---- Q3_K: 16 sub-blocks of 16, signed 6-bit scales

def _pack_scales_q3k(l: np.ndarray) -> np.ndarray:
    """(S, 16) 6-bit codes (scale + 32) -> 12 bytes: low nibbles of 0..7 and 8..15, then the
    high 2 bits of sub-block j in bits 2*(j//4) of byte 8 + j%4."""
    l = l.astype(np.uint8)
    out = np.empty((len(l), 12), np.uint8)
    out[:, 0:8] = (l[:, 0:8] & 0xF) | ((l[:, 8:16] & 0xF) << 4)
    hi = (l >> 4) & 3
    out[:, 8:12] = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    return out


def _affine_q3k(header):
    q = header[:, 96:108]
    low = np.concatenate([q[:, 0:8] & 0xF, q[:, 0:8] >> 4], axis=1)
    hi = np.concatenate([(q[:, 8:12] >> s) & 3 for s in (0, 2, 4, 6)], axis=1)
    sc = (low | (hi << 4)).astype(F) - F(32)
    d = np.ascontiguousarray(header[:, 108:110]).view(np.float16).astype(F)
    return d * sc


def _choose_q3k(xs, qw):
    S = len(xs)
    x = _sub(xs, 16)
    if qw is None:
        scales, L = q3_search(x, 4)
        big, _ = signed_absmax(np.ascontiguousarray(scales.reshape(S, 16).T))
        live = big != 0
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = F(-32) / big
            l = np.clip(nearest_int(iscale[:, None] * scales.reshape(S, 16)), -32, 31) + F(32)
            d = np.where(live, F(1) / iscale, F(0))
        l = np.where(live[:, None], l, 0)
    else:
        w = _importance_weights(xs, qw, 16, 2)
        sw = seqsum(w)
        scales, L = symmetric_search(x, 4, w)
        d, l = symmetric_search(np.ascontiguousarray(scales.reshape(S, 16).T), 32,
                                np.ascontiguousarray(sw.reshape(S, 16).T))
        l = l.T
    header = np.zeros((S, 110), np.uint8)
    header[:, 96:108] = _pack_scales_q3k(l)
    header[:, 108:110] = fp16_bits(d)
    L = _requantize(x, L - F(4), _affine_q3k(header).ravel(), None, F(-4), F(3)) + F(4)
    return header, _unsub(L, S).astype(np.uint8)


def _pack_q3k(codes):
    c = codes.astype(np.uint8)
    out = np.zeros((len(codes), 110), np.uint8)
    hi = (c >> 2) & 1                          # bit k of hmask[m] is code 32k + m's third bit
    out[:, 0:32] = (hi.reshape(-1, 8, 32) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(
        axis=1, dtype=np.uint8)
    out[:, 32:96] = _pack_2bit(c & 3)
    return out


# ---- Q6_K: 16 sub-blocks of 16, int8 scales

def _choose_q6k(xs, qw):
    S = len(xs)
    x = _sub(xs, 16)
    scales, L = symmetric_search(x, 32, None if qw is None else _sub(qw, 16))
    big, amax = signed_absmax(np.ascontiguousarray(scales.reshape(S, 16).T))
    live = ~(amax < F(1e-15))
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F(-128) / big
        sc = np.minimum(np.rint(iscale[:, None] * scales.reshape(S, 16)), F(127))
        d = np.where(live, F(1) / iscale, F(0))
    sc = np.where(live[:, None], sc, 0)
    header = np.zeros((S, 210), np.uint8)
    header[:, 192:208] = sc.astype(np.int8).view(np.uint8)
    header[:, 208:210] = fp16_bits(d)
    L = _requantize(x, L - F(32), _affine_q6k(header).ravel(), None, F(-32), F(31)) + F(32)
    L[:, np.repeat(~live, 16)] = 0             # an all-zero super-block is all zero bytes
    return header, _unsub(L, S).astype(np.uint8)


def _affine_q6k(header):
    d = np.ascontiguousarray(header[:, 208:210]).view(np.float16).astype(F)
    return d * header[:, 192:208].view(np.int8).astype(F)


def _pack_q6k(codes):
    c = codes.astype(np.uint8).reshape(-1, 2, 4, 32)       # (half, quarter, l)
    out = np.zeros((len(codes), 210), np.uint8)
    ql = np.stack([(c[:, :, 0] & 0xF) | ((c[:, :, 2] & 0xF) << 4),
                   (c[:, :, 1] & 0xF) | ((c[:, :, 3] & 0xF) << 4)], axis=2)   # (n, 2, 2, 32)
    out[:, 0:128] = ql.reshape(-1, 128)
    h = c >> 4
    out[:, 128:192] = (h[:, :, 0] | (h[:, :, 1] << 2) | (h[:, :, 2] << 4) | (h[:, :, 3] << 6)).reshape(-1, 64)
    return out


# ---- registry

def _kquant(choose):
    def run(x, qw):
        rows = x.shape[0]
        return choose(x.reshape(-1, QK_K), _tiles(qw, rows))
    return run


def _grid(sub_affine, zero=None):
    """(scale, offset) per sub-block, from a block header."""
    def affine(header):
        got = sub_affine(header)
        if zero is None:
            return got
        return got, got * F(zero)
    return affine


CODECS = {
    "Q2_K": BlockCodec("Q2_K", QK_K, 84, 3, _kquant(_choose_q2k), _pack_q2k, _grid(_affine_q2k)),
    "Q3_K": BlockCodec("Q3_K", QK_K, 110, 7, _kquant(_choose_q3k), _pack_q3k, _grid(_affine_q3k, 4)),
    "Q4_K": BlockCodec("Q4_K", QK_K, 144, 15, _kquant(lambda xs, qw: _choose_4k5k(xs, qw, 15)),
                       _pack_q4k, _grid(_affine_4k5k)),
    "Q5_K": BlockCodec("Q5_K", QK_K, 176, 31, _kquant(lambda xs, qw: _choose_4k5k(xs, qw, 31)),
                       _pack_q5k, _grid(_affine_4k5k)),
    "Q6_K": BlockCodec("Q6_K", QK_K, 210, 63, _kquant(_choose_q6k), _pack_q6k, _grid(_affine_q6k, 32)),
}
