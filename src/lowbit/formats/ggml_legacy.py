"""GGML's 32-weight block types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Without importance these are llama.cpp's quantize_row_*_ref (the bytes gguf-py also writes);
with it, llama.cpp's importance-weighted quantize_q4_0 / q4_1 / q5_0 / q5_1, whose weights are
importance * sqrt(sigma2 + x**2) with sigma2 the mean square of the whole row. Q8_0 has no
weighted variant in llama.cpp and ignores importance.

Layouts (bytes): Q8_0 d:2 qs:32 | Q4_0 d:2 qs:16 | Q4_1 d:2 m:2 qs:16 |
Q5_0 d:2 qh:4 qs:16 | Q5_1 d:2 m:2 qh:4 qs:16. qs holds code j in the low nibble of byte j and
code j+16 in the high nibble; qh holds the 5th bit of code j in bit j (little-endian uint32).
"""
from __future__ import annotations

import numpy as np

from lowbit.formats.ggml_search import (
    F, BlockCodec, affine_search, first_max, first_min, fp16_bits, seqsum, signed_absmax,
    symmetric_search,
)

QK = 32


def _blocks(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, QK)


def _row_weights(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """importance * sqrt(sigma2 + x**2) per weight, sigma2 = mean x**2 of the row."""
    rows, cols = x.shape
    sigma2 = seqsum(np.ascontiguousarray((x * x).T)) / F(cols)
    return qw[None, :] * np.sqrt(sigma2[:, None] + x * x)


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d != 0, F(1) / d, F(0))


def _header(n: int, size: int, *fields: tuple[int, np.ndarray]) -> np.ndarray:
    out = np.zeros((n, size), np.uint8)
    for at, value in fields:
        out[:, at:at + 2] = fp16_bits(value)
    return out


def _roundf(v: np.ndarray) -> np.ndarray:
    """C roundf: halves away from zero (a - floor(a) is exact, so no double rounding)."""
    a = np.abs(v)
    f = np.floor(a)
    return np.copysign(f + (a - f >= F(0.5)), v)


# ---- choosing (header, codes)

def _q8_0(x, qw):
    b = _blocks(x)
    d = np.abs(b).max(axis=1) / F(127)
    codes = _roundf(b * _inverse(d)[:, None]) + F(128)
    return _header(len(b), 34, (0, d)), codes.astype(np.uint8)


def _symmetric(nmax: int, size: int):
    """Q4_0 (nmax 8) and Q5_0 (nmax 16): value = d * (code - nmax)."""
    def choose(x, qw):
        b = _blocks(x)
        if qw is None:
            big, _ = signed_absmax(b.T)
            d = big / F(-nmax)
            t = np.trunc(b * _inverse(d)[:, None] + F(nmax + 0.5))   # C: (int8_t)(x*id + nmax.5)
            codes = np.minimum(t, F(2 * nmax - 1))
        else:
            w = _blocks(_row_weights(x, qw))
            d, L = symmetric_search(np.ascontiguousarray(b.T), nmax, np.ascontiguousarray(w.T))
            codes = L.T
        return _header(len(b), size, (0, d)), codes.astype(np.uint8)
    return choose


def _asymmetric(nmax: int, size: int):
    """Q4_1 (nmax 15) and Q5_1 (nmax 31): value = d * code + m."""
    def choose(x, qw):
        b = _blocks(x)
        if qw is None:
            lo = first_min(b.T)
            d = (first_max(b.T) - lo) / F(nmax)
            t = np.trunc((b - lo[:, None]) * _inverse(d)[:, None] + F(0.5))
            # Q4_1 clamps to 15; Q5_1 keeps the low 5 bits of a (never reached) 32
            codes = np.minimum(t, F(15)) if nmax == 15 else np.mod(t, F(32))
            m = lo
        else:
            w = _blocks(_row_weights(x, qw))
            d, the_min, L = affine_search(np.ascontiguousarray(b.T), np.ascontiguousarray(w.T),
                                          nmax, -0.9, 0.05, 36, False)
            codes, m = L.T, -the_min
        return _header(len(b), size, (0, d), (2, m)), codes.astype(np.uint8)
    return choose


# ---- packing codes

def _nibbles(codes: np.ndarray) -> np.ndarray:
    return (codes[:, :16] & 0xF) | ((codes[:, 16:] & 0xF) << 4)


def _fifth_bits(codes: np.ndarray) -> np.ndarray:
    return np.packbits((codes >> 4) & 1, axis=1, bitorder="little")


def _pack(size: int, qs_at: int, qh_at: int | None = None):
    def pack(codes):
        codes = codes.astype(np.uint8)
        out = np.zeros((len(codes), size), np.uint8)
        out[:, qs_at:] = _nibbles(codes)
        if qh_at is not None:
            out[:, qh_at:qh_at + 4] = _fifth_bits(codes)
        return out
    return pack


def _pack_q8_0(codes):
    out = np.zeros((len(codes), 34), np.uint8)
    out[:, 2:] = codes.astype(np.uint8) ^ 0x80   # int8 (code - 128)
    return out


# ---- reading the grid back from a header

def _half(header: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(header[:, at:at + 2]).view(np.float16).astype(F)


def _zero_point(zero: int):
    def affine(header):
        d = _half(header, 0)  # one scale per block
        return d, d * F(zero)
    return affine


def _with_min(header):
    return _half(header, 0), -_half(header, 2)


CODECS = {
    "Q8_0": BlockCodec("Q8_0", QK, 34, 255, _q8_0, _pack_q8_0, _zero_point(128)),
    "Q4_0": BlockCodec("Q4_0", QK, 18, 15, _symmetric(8, 18), _pack(18, 2), _zero_point(8)),
    "Q5_0": BlockCodec("Q5_0", QK, 22, 31, _symmetric(16, 22), _pack(22, 6, 2), _zero_point(16)),
    "Q4_1": BlockCodec("Q4_1", QK, 20, 15, _asymmetric(15, 20), _pack(20, 4), _with_min),
    "Q5_1": BlockCodec("Q5_1", QK, 24, 31, _asymmetric(31, 24), _pack(24, 8, 4), _with_min),
}
