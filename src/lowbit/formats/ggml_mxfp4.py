"""llama.cpp's MXFP4 blocks (GGUF type 39): 17 bytes per 32 weights, the e8m0 exponent byte then
16 bytes of codes, byte j holding weight j in its low nibble and weight j + 16 in its high one.
The values are formats/mxfp4.py's with its "ggml" rounding (quantize_row_mxfp4_ref)."""
from __future__ import annotations

import numpy as np
import torch

from lowbit.formats.mxfp4 import BLOCK, MXFP4Grid

TYPE_SIZE = 1 + BLOCK // 2


def pack(codes: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """uint8 (rows, cols / 32 * 17) from codes (rows, cols) 0..15 and exponents (rows, cols / 32)."""
    rows, cols = codes.shape
    c = np.asarray(codes, np.uint8).reshape(rows, cols // BLOCK, 2, BLOCK // 2)
    qs = c[:, :, 0] | (c[:, :, 1] << 4)
    out = np.concatenate([np.asarray(exponent, np.uint8)[:, :, None], qs], axis=2)
    return out.reshape(rows, cols // BLOCK * TYPE_SIZE)


def unpack(blocks: np.ndarray, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes (rows, cols), exponents (rows, cols / 32)) of pack's bytes."""
    b = np.asarray(blocks, np.uint8).reshape(-1, cols // BLOCK, TYPE_SIZE)
    qs = b[:, :, 1:]
    codes = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(b.shape[0], cols)
    return codes, b[:, :, 0].copy()


def quantize(W: np.ndarray) -> np.ndarray:
    """llama.cpp's reference MXFP4 bytes of W float32 (rows, cols), cols a multiple of 32."""
    qt = MXFP4Grid("ggml").rtn(torch.from_numpy(np.ascontiguousarray(W, np.float32)))
    return pack(qt.codes.numpy(), qt.exponent.numpy())
