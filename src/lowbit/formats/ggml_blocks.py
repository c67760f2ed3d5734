"""GGML block quantizers (the bytes inside a GGUF tensor), ours, faithful to llama.cpp.

quantize(W, qtype, importance=None) -> uint8 (rows, bytes_per_row)

STUB: legacy types delegate to gguf-py for now; k-quants are being written.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gq


def quantize(W: np.ndarray, qtype: GGMLQuantizationType, importance: np.ndarray | None = None) -> np.ndarray:
    """W float32 (rows, cols) -> packed blocks uint8 (rows, cols // block * type_size)."""
    return gq.quantize(np.ascontiguousarray(W, dtype=np.float32), qtype)
