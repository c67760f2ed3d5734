"""Numeric grids, quantized-tensor kinds and bit packing: plain tensor math, no nn.Module."""
from lowbit.formats.qtensor import KINDS, QTensor, from_named, to_named
from lowbit.formats.grid import GRIDS, Grid, grid_for
from lowbit.formats.int_affine import (
    IntAffineGrid,
    QuantizedTensor,
    column_groups,
    dequantize,
    fit_grid,
    quantize_codes,
    quantize_rtn,
)
from lowbit.formats.nf4 import NF4Grid, NF4Tensor  # registers the nf4 and fp4 grids
from lowbit.formats.fp8 import FP8Grid, FP8Tensor  # registers the fp8 grids
from lowbit.formats.nvfp4 import NVFP4Grid, NVFP4Tensor  # registers the nvfp4 grid
from lowbit.formats.mxfp4 import MXFP4Grid, MXFP4Tensor  # registers the mxfp4 grid
from lowbit.formats.ggml_tensor import GGMLGrid, GGMLTensor  # registers the ggml grid
from lowbit.formats.metrics import error_metrics, max_abs_error, mse, sqnr_db
from lowbit.formats.packing import pack_stream, pack_words, unpack_stream, unpack_words

__all__ = [
    "KINDS", "QTensor", "from_named", "to_named", "GRIDS", "Grid", "grid_for",
    "IntAffineGrid", "NF4Grid", "NF4Tensor", "FP8Grid", "FP8Tensor", "NVFP4Grid", "NVFP4Tensor", "MXFP4Grid", "MXFP4Tensor", "GGMLGrid", "GGMLTensor",
    "QuantizedTensor", "column_groups", "dequantize", "fit_grid", "quantize_codes",
    "quantize_rtn", "error_metrics", "max_abs_error", "mse", "sqnr_db",
    "pack_words", "unpack_words", "pack_stream", "unpack_stream",
]
