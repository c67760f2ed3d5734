"""llama.cpp's block grids as a quantized-tensor kind and a grid that methods are handed.

GGMLTensor: one weight matrix as GGML blocks (the exact bytes of a GGUF tensor) and the floats
they decode to. GGMLGrid: the block grid of one type (Q4_K, Q8_0, ...): rtn is llama.cpp's own
rounding (byte-identical to its C code; its imatrix path with an importance vector); fit /
round_column / encode let GPTQ choose the codes on the same grids (formats/ggml_blocks.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from lowbit.errors import LowbitError
from lowbit.formats import ggml_blocks, ggml_mxfp4
from lowbit.formats.grid import Grid, register_grid
from lowbit.formats.mxfp4 import MXFP4Grid
from lowbit.formats.qtensor import QTensor, register_kind


def ggml_type(name: str) -> T:
    """The GGML type called `name` ("Q4_K"), if lowbit has a block quantizer for it."""
    try:
        qtype = T[str(name).upper()]
    except KeyError:
        qtype = None
    if qtype not in ggml_blocks.SUPPORTED:
        names = " ".join(t.name for t in ggml_blocks.SUPPORTED)
        raise LowbitError(f"GGML type {name!r} has no block quantizer in lowbit: use one of {names}")
    return qtype


def decode_blocks(blocks: np.ndarray, qtype: T, shape) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(blocks, qtype), dtype=np.float32)
                            .reshape(shape))


@register_kind
@dataclass
class GGMLTensor(QTensor):
    """values (rows, cols) float32 is exactly what the blocks decode to (gguf.quants.dequantize);
    None when nobody needs them held (a 49k-token matrix on its way to the file), then
    dequantize() decodes them from the blocks."""
    kind = "ggml"
    qtype: T
    blocks: np.ndarray    # uint8 (rows, bytes per row), HF row order
    values: torch.Tensor | None = None  # (rows, cols) float32

    @property
    def shape(self):
        if self.values is not None:
            return tuple(self.values.shape)
        return tuple(gguf.quant_shape_from_byte_shape(self.blocks.shape, T(self.qtype)))

    def dequantize(self) -> torch.Tensor:
        return self.values if self.values is not None else decode_blocks(self.blocks, self.qtype, self.shape)

    def stored_bytes(self) -> int:
        return int(self.blocks.nbytes)

    def drop_decoded(self) -> None:
        self.values = None

    def state(self):
        return {"blocks": torch.from_numpy(np.ascontiguousarray(self.blocks))}

    def header(self):
        return {"qtype": T(self.qtype).name, "shape": list(self.shape)}

    @classmethod
    def from_state(cls, state, header):
        # the blocks alone: a reader that wants the floats decodes them (dequantize)
        return cls(T[header["qtype"]], state["blocks"].cpu().numpy())

    def to(self, device):
        return GGMLTensor(self.qtype, self.blocks, None if self.values is None else self.values.to(device))

    def describe(self):
        return T(self.qtype).name


ROUND_CHUNK = 1 << 22  # weights rounded at a time: rows are independent, and the rounding's
# float32 temporaries of a 49k x 2k embedding would be several times its size


def round_ggml(W: torch.Tensor, qtype: T, importance: np.ndarray | None = None, *,
               values: bool = True, into: torch.Tensor | None = None) -> GGMLTensor:
    """llama.cpp's own rounding (byte-identical to its C code): the reference path without
    importance, its imatrix path with it. Rows are rounded a block of rows at a time, each
    block converted to float32 on its own, so W may stay in its checkpoint dtype.
    values=False: keep only the blocks (decoded on demand). into: write what the blocks decode
    to into this tensor (W itself, rounded in place) instead of holding a float32 copy."""
    rows, cols = W.shape
    step = max(1, ROUND_CHUNK // max(cols, 1))
    blocks = np.empty(gguf.quant_shape_to_byte_shape((rows, cols), T(qtype)), np.uint8)
    out = torch.empty(rows, cols, dtype=torch.float32) if values and into is None else None
    for r in range(0, rows, step):
        Wn = W[r:r + step].detach().to(torch.float32).cpu().numpy()
        b = ggml_blocks.quantize(Wn, qtype, importance).reshape(Wn.shape[0], -1)
        blocks[r:r + step] = b
        if out is not None or into is not None:
            (out if out is not None else into)[r:r + step].copy_(decode_blocks(b, qtype, Wn.shape))
    return GGMLTensor(qtype, blocks, out)


@dataclass
class GGMLFit:
    grid: ggml_blocks.BlockGrid


class GGMLGrid(Grid):
    """importance (cols,): llama.cpp's imatrix semantics, the mean squared input per column."""
    kind = "ggml"
    solve_block = 256  # whole 256-column super-blocks per lazy update
    threads = 1  # a column is rounded by small numpy calls: a second thread only waits
    rows_independent = True
    takes_importance = True  # llama.cpp's imatrix: the mean squared input per column

    def __init__(self, qtype: T):
        self.qtype = T(qtype)
        self.is_float = self.qtype in ggml_blocks.FLOAT_TYPES
        self.block = 0 if self.is_float else ggml_blocks.block_size(self.qtype)

    def rtn(self, W, importance=None):
        return round_ggml(W, self.qtype, None if importance is None else np.asarray(importance, np.float32))

    def fit(self, W, importance=None):
        return GGMLFit(ggml_blocks.fit_grid(W.detach().float().numpy(), self.qtype, _np(importance)))

    def empty(self, rows, cols):
        return GGMLFit(ggml_blocks.empty_grid(self.qtype, rows, cols))

    def fit_block(self, fitted, W_cols, block, cols, importance=None):
        g, G = fitted.grid, self.block
        one = ggml_blocks.fit_grid(W_cols.detach().float().numpy(), self.qtype, _np(importance))
        at = slice(block * G // g.sub, (block + 1) * G // g.sub)
        g.scale[:, at], g.offset[:, at] = one.scale, one.offset
        g.header[:, block] = one.header[:, 0]

    def round_column(self, fitted, c, w):
        g = fitted.grid
        q = ggml_blocks.round_to_grid(g, w.numpy()[:, None], cols=slice(c, c + 1))[:, 0]
        s = c // g.sub
        return torch.from_numpy(q), torch.from_numpy(g.scale[:, s] * q.astype(np.float32) - g.offset[:, s])

    def encode(self, fitted, codes, reordered=False):
        if reordered:
            raise ValueError("GGML blocks hold contiguous columns: they cannot follow a reordering")
        codes = codes.numpy()
        blocks = ggml_blocks.encode(fitted.grid, codes)
        return GGMLTensor(self.qtype, blocks, torch.from_numpy(fitted.grid.dequantize(codes)))

    def join_rows(self, parts):
        # only very large matrices are solved by rows (a 49k-token head): their float values,
        # as big again as the checkpoint's matrix, are decoded from the blocks when asked for
        return GGMLTensor(self.qtype, np.concatenate([p.blocks for p in parts]))

    def describe(self):
        return self.qtype.name


def _np(importance):
    if importance is None:
        return None
    return importance.numpy() if isinstance(importance, torch.Tensor) else np.asarray(importance, np.float32)


class GGMLMXFP4Grid(MXFP4Grid):
    """MXFP4 on llama.cpp's rounding, encoded as GGUF type MXFP4 blocks."""
    kind = "ggml"

    def __init__(self):
        super().__init__("ggml")
        self.qtype = T.MXFP4

    def encode(self, fitted, codes, reordered=False):
        qt = super().encode(fitted, codes, reordered)
        blocks = ggml_mxfp4.pack(qt.codes.numpy(), qt.exponent.numpy())
        return GGMLTensor(T.MXFP4, blocks, qt.dequantize())

    def join_rows(self, parts):
        return GGMLTensor(T.MXFP4, np.concatenate([p.blocks for p in parts]))


@register_grid("ggml")
def _ggml_grid(spec, auto_clip):
    qtype = ggml_type(spec.ggml_type)
    return GGMLMXFP4Grid() if qtype == T.MXFP4 else GGMLGrid(qtype)
