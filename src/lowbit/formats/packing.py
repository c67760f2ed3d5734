"""Exact bit packing of unsigned codes.

pack_words: floor(32 / bits) codes per int32 word along one axis, code i of a word at
bit i * bits, the axis padded with zeros (the layout of compressed-tensors
pack-quantized; 3-bit leaves 2 bits of each word unused).
pack_bitstream: a dense little-endian bit stream in uint8, no bit wasted (what 3-bit
formats such as GPTQ's and the GGUF k-quants need).
"""
from __future__ import annotations

import torch


def _check(values: torch.Tensor, bits: int):
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= 2**bits):
        raise ValueError(f"codes out of range for {bits} bits")


def pack_words(values: torch.Tensor, bits: int, dim: int = -1) -> torch.Tensor:
    """(…, n) codes in [0, 2**bits) -> (…, ceil(n / (32 // bits))) int32 along `dim`."""
    _check(values, bits)
    per = 32 // bits
    v = values.movedim(dim, -1).to(torch.int64)
    n = v.shape[-1]
    pad = (-n) % per
    if pad:
        v = torch.nn.functional.pad(v, (0, pad))
    v = v.reshape(*v.shape[:-1], -1, per)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    words = (v << shifts).sum(-1)
    # reinterpret the low 32 bits as a signed int32 (two's complement)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.movedim(-1, dim).contiguous()


def unpack_words(words: torch.Tensor, bits: int, n: int, dim: int = -1) -> torch.Tensor:
    """Inverse of pack_words: the first n codes along `dim`, as uint8."""
    per = 32 // bits
    w = words.movedim(dim, -1).to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(per, dtype=torch.int64) * bits
    v = (w[..., None] >> shifts) & (2**bits - 1)
    v = v.reshape(*w.shape[:-1], -1)[..., :n]
    return v.to(torch.uint8).movedim(-1, dim)


def pack_bitstream(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Flattened codes -> uint8 bytes, code k at bit offset k * bits (little-endian)."""
    _check(values, bits)
    v = values.reshape(-1).to(torch.int64)
    bit_idx = torch.arange(bits, dtype=torch.int64)
    stream = ((v[:, None] >> bit_idx) & 1).reshape(-1)  # one entry per bit
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.nn.functional.pad(stream, (0, pad))
    weights = 1 << torch.arange(8, dtype=torch.int64)
    return (stream.reshape(-1, 8) * weights).sum(-1).to(torch.uint8)


def unpack_bitstream(data: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    bit_idx = torch.arange(8, dtype=torch.int64)
    stream = ((data.to(torch.int64)[:, None] >> bit_idx) & 1).reshape(-1)[: n * bits]
    weights = 1 << torch.arange(bits, dtype=torch.int64)
    return (stream.reshape(n, bits) * weights).sum(-1).to(torch.uint8)
