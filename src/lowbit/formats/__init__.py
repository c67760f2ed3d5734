"""Numeric grids and bit packing: plain tensor math, no nn.Module."""
from lowbit.formats.int_affine import (
    QuantizedTensor,
    column_groups,
    dequantize,
    fit_grid,
    quantize_codes,
    quantize_rtn,
)
from lowbit.formats.metrics import error_metrics, max_abs_error, mse, sqnr_db
from lowbit.formats.packing import pack_stream, pack_words, unpack_stream, unpack_words

__all__ = [
    "QuantizedTensor", "column_groups", "dequantize", "fit_grid", "quantize_codes",
    "quantize_rtn", "error_metrics", "max_abs_error", "mse", "sqnr_db",
    "pack_words", "unpack_words", "pack_stream", "unpack_stream",
]
