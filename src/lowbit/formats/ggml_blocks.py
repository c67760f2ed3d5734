"""GGML block quantizers (the bytes inside a GGUF tensor), ours, faithful to llama.cpp.

  quantize(W, qtype, importance=None) -> uint8 (rows, cols // block * type_size)

Types: F32 F16 BF16, Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 (ggml_legacy), Q2_K..Q6_K (ggml_kquants), MXFP4 (ggml_mxfp4).
Without importance the bytes are llama.cpp's quantize_row_*_ref; with an importance vector
(cols,), llama.cpp imatrix semantics (mean squared activation per input column), they are
its importance-weighted quantize_* paths. Reference: ggml-org/ggml d99724f (llama.cpp's
ggml-quants.c as of 2026-08); tests/test_ggml_blocks.py checks bytes against fixtures that
bench/ggml_reference/ generated from that C code.

Grid interface, for methods that choose codes themselves (GPTQ on a k-quant grid):
  fit_grid(W, qtype, importance=None) -> BlockGrid   the grid quantize() would choose for W
  round_to_grid(grid, W, cols=None) -> codes          plain nearest rounding on that fixed grid
  encode(grid, codes) -> uint8 blocks                 the exact block bytes for those codes
with dequantize(encode(grid, q)) == grid.dequantize(q) bit for bit.
quantize() itself may pick codes that are not nearest on its final grid (llama.cpp rounds with
the unquantized sub-scale first and keeps those codes where the stored sub-scale is zero).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T

from lowbit.formats import ggml_mxfp4
from lowbit.formats.ggml_kquants import CODECS as _K
from lowbit.formats.ggml_legacy import CODECS as _LEGACY
from lowbit.formats.ggml_search import BlockCodec

CODECS: dict[T, BlockCodec] = {T[name]: codec for name, codec in {**_LEGACY, **_K}.items()}
FLOAT_TYPES = (T.F32, T.F16, T.BF16)
CODE_BOOK_TYPES = (T.MXFP4,)  # non-affine values (e2m1 with a power-of-two scale): formats/mxfp4.py
SUPPORTED = FLOAT_TYPES + tuple(CODECS) + CODE_BOOK_TYPES
_ROWS_PER_CHUNK_ELEMS = 1 << 17   # weights per chunk: arrays stay in cache, numpy calls stay few


@dataclass(frozen=True)
class BlockGrid:
    """The affine grid of one quantized matrix: value = scale * q - offset with integer q in
    0..qmax, scale and offset per run of `sub` consecutive weights of a row (a legacy type's
    block of 32, a k-quant's sub-block of 16 or 32): a GPTQ solve of a 2048 x 5632 matrix
    holds them in 3 MB, not the 92 MB of one pair per weight. Symmetric types have
    offset = scale * zero (Q8_0 zero 128, Q4_0 8, Q5_0 16, Q3_K 4, Q6_K 32). header holds each
    block's bytes other than its codes."""
    qtype: T
    scale: np.ndarray     # (rows, cols // sub) float32
    offset: np.ndarray    # (rows, cols // sub) float32
    qmax: int
    header: np.ndarray    # (rows, cols // block, type_size) uint8, code bits zero
    sub: int              # weights per scale

    @property
    def shape(self) -> tuple[int, int]:
        return self.scale.shape[0], self.scale.shape[1] * self.sub

    def per_weight(self, cols: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset) of every weight, of all columns or of `cols`."""
        if cols is None:
            return np.repeat(self.scale, self.sub, axis=1), np.repeat(self.offset, self.sub, axis=1)
        at = np.arange(self.shape[1])[cols] // self.sub
        return self.scale[:, at], self.offset[:, at]

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """float32 values of codes q, a block of rows at a time (the per-weight scales and
        offsets of a whole 2048 x 5632 matrix would be 92 MB of temporaries)."""
        q = np.asarray(q)
        out = np.empty(self.shape, np.float32)
        for rs in _chunks(*self.shape):
            out[rs] = (np.repeat(self.scale[rs], self.sub, axis=1) * q[rs].astype(np.float32)
                       - np.repeat(self.offset[rs], self.sub, axis=1))
        return out


def empty_grid(qtype: T, rows: int, cols: int) -> BlockGrid:
    """A zero grid of the type's layout, to be filled a block of columns at a time."""
    codec = CODECS[_check_type(qtype)]
    per_block = codec.affine(np.zeros((1, codec.type_size), np.uint8))[0].shape[1]
    sub = codec.block // per_block
    z = np.zeros((rows, cols // sub), np.float32)
    return BlockGrid(T(qtype), z, z.copy(), codec.qmax,
                     np.zeros((rows, cols // codec.block, codec.type_size), np.uint8), sub)


def block_size(qtype: T) -> int:
    if qtype in CODE_BOOK_TYPES:
        return ggml_mxfp4.BLOCK
    return 1 if qtype in FLOAT_TYPES else CODECS[_check_type(qtype)].block


def _check_type(qtype) -> T:
    qtype = T(qtype)
    if qtype not in SUPPORTED:   # NotImplementedError, as gguf-py says it
        supported = " ".join(t.name for t in SUPPORTED)
        raise NotImplementedError(f"GGML type {qtype.name} is not supported; use one of {supported}")
    return qtype


def _check(W: np.ndarray, qtype, importance):
    qtype = _check_type(qtype)
    W = np.asarray(W)
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (rows, cols), got shape {W.shape}")
    W = np.ascontiguousarray(W, dtype=np.float32)
    rows, cols = W.shape
    size = block_size(qtype)
    if cols % size:
        raise ValueError(f"{qtype.name} needs rows of a multiple of {size} weights, got {cols} "
                         "(llama.cpp falls back to another type for such tensors)")
    if not np.isfinite(W).all():
        raise ValueError("W has NaN or infinite values")
    if importance is not None and qtype in CODECS and qtype != T.Q8_0:
        importance = np.ascontiguousarray(importance, dtype=np.float32)
        if importance.shape != (cols,):
            raise ValueError(f"importance must have shape ({cols},), got {importance.shape}")
        if not (np.isfinite(importance).all() and (importance >= 0).all()):
            raise ValueError("importance must be finite and non-negative")
    else:
        importance = None   # float types and Q8_0 have no importance-weighted variant
    return W, qtype, importance


def _chunks(rows: int, cols: int):
    step = max(1, _ROWS_PER_CHUNK_ELEMS // cols)
    for r in range(0, rows, step):
        yield slice(r, min(rows, r + step))


def _choose(W, codec: BlockCodec, importance):
    """header (rows, nb, type_size), codes (rows, nb, block), chunk by chunk of rows."""
    rows, cols = W.shape
    nb = cols // codec.block
    header = np.empty((rows, nb, codec.type_size), np.uint8)
    codes = np.empty((rows, nb, codec.block), np.uint8)
    for rs in _chunks(rows, cols):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # as C: inf, NaN
            h, c = codec.choose(W[rs], importance)
        header[rs] = h.reshape(-1, nb, codec.type_size)
        codes[rs] = c.reshape(-1, nb, codec.block)
    return header, codes


def _float_bytes(W: np.ndarray, qtype: T) -> np.ndarray:
    if qtype == T.F32:
        return W.view(np.uint8)
    if qtype == T.F16:
        return W.astype(np.float16).view(np.uint8)
    # BF16 as ggml_compute_fp32_to_bf16: round to nearest even (NaN was refused)
    n = W.view(np.uint32).astype(np.uint64)
    n = (n + (0x7FFF + ((n >> 16) & 1))) >> 16
    return n.astype(np.uint16).view(np.uint8)


def _assemble(codec: BlockCodec, header: np.ndarray, codes: np.ndarray) -> np.ndarray:
    rows, nb = header.shape[:2]
    packed = codec.pack_codes(codes.reshape(-1, codec.block)).reshape(header.shape)
    return (header | packed).reshape(rows, nb * codec.type_size)


def quantize(W: np.ndarray, qtype: T, importance: np.ndarray | None = None) -> np.ndarray:
    """W float32 (rows, cols) -> packed blocks uint8 (rows, cols // block * type_size)."""
    W, qtype, importance = _check(W, qtype, importance)
    if qtype in FLOAT_TYPES:
        return _float_bytes(W, qtype)
    if qtype == T.MXFP4:
        return ggml_mxfp4.quantize(W)
    codec = CODECS[qtype]
    return _assemble(codec, *_choose(W, codec, importance))


def fit_grid(W: np.ndarray, qtype: T, importance: np.ndarray | None = None) -> BlockGrid:
    """The grid quantize(W, qtype, importance) chooses: per sub-block its stored (already
    quantized) scale and offset. W is (rows, cols) with cols a multiple of the block (one block: 32 or 256);
    the Q4_0..Q5_1 importance weights depend on the whole row, as in quantize()."""
    W, qtype, importance = _check(W, qtype, importance)
    if qtype in FLOAT_TYPES:
        raise ValueError(f"{qtype.name} is a float type: it has no affine grid")
    if qtype in CODE_BOOK_TYPES:
        raise ValueError(f"{qtype.name} has no affine grid: its grid is formats/mxfp4.py's")
    codec = CODECS[qtype]
    header, _ = _choose(W, codec, importance)
    with np.errstate(over="ignore", invalid="ignore"):
        scale, offset = codec.affine(header.reshape(-1, codec.type_size))
    rows, cols = W.shape
    sub = codec.block // scale.shape[1]
    return BlockGrid(qtype, scale.reshape(rows, -1), offset.reshape(rows, -1), codec.qmax, header, sub)


def round_to_grid(grid: BlockGrid, W: np.ndarray, cols: slice | None = None) -> np.ndarray:
    """Nearest code on the fixed grid, clamped to 0..qmax; uint8 shaped like W. Where a
    sub-block's scale is zero every code gives the same value, and 0 is returned.
    cols picks the grid's columns W stands for (GPTQ rounds one column at a time)."""
    scale, offset = grid.per_weight(cols)
    W = np.asarray(W, dtype=np.float64)
    if W.shape != scale.shape:
        raise ValueError(f"W has shape {W.shape}, the grid (columns) {scale.shape}")
    scale = scale.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint((W + offset) / scale)
    q = np.where(scale != 0, q, 0)
    return np.clip(q, 0, grid.qmax).astype(np.uint8)


def encode(grid: BlockGrid, q: np.ndarray) -> np.ndarray:
    """The block bytes (rows, cols // block * type_size) for integer codes q on grid."""
    q = np.asarray(q)
    if q.shape != grid.shape:
        raise ValueError(f"codes have shape {q.shape}, the grid {grid.shape}")
    if (q.min(initial=0) < 0 or q.max(initial=0) > grid.qmax
            or (q.dtype.kind == "f" and not np.array_equal(q, np.round(q)))):
        raise ValueError(f"codes must be integers in 0..{grid.qmax}")
    codec = CODECS[grid.qtype]
    rows, nb = grid.header.shape[:2]
    return _assemble(codec, grid.header, q.astype(np.uint8).reshape(rows, nb, codec.block))
