"""Exact bit packing of unsigned codes.

pack_words: floor(32 / bits) codes per int32 word along one axis, code i of a word at
bit i * bits, the axis padded with zeros (the layout of compressed-tensors
pack-quantized; 3-bit leaves 2 bits of each word unused).
pack_stream: a dense little-endian bit stream in int32 words, no bit wasted, a code may
straddle two words (GPTQ's qweight/qzeros layout, which 3-bit codes need).
These two layouts are every packing lowbit's integer formats use; the GGML block types pack
their own bytes (formats/ggml_*.py), as llama.cpp defines them.
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


_WORD = 32


def pack_stream(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Codes in [0, 2**bits) along `dim` -> int32 words (ceil(n * bits / 32) along `dim`),
    code i at bit i * bits of the little-endian stream; a code may straddle two words."""
    v = codes.movedim(dim, -1).to(torch.int64)
    n = v.shape[-1]
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 2**bits):
        raise ValueError(f"codes out of range for {bits} bits")
    nblocks = -(-n // _WORD)  # 32 codes fill exactly `bits` words: pack block by block
    v = torch.nn.functional.pad(v, (0, nblocks * _WORD - n)).reshape(*v.shape[:-1], nblocks, _WORD)
    words = torch.zeros(*v.shape[:-1], bits, dtype=torch.int64)
    for i in range(_WORD):
        word, shift = divmod(i * bits, _WORD)
        words[..., word] |= (v[..., i] << shift) & 0xFFFFFFFF
        if shift + bits > _WORD:  # high bits spill into the next word
            words[..., word + 1] |= v[..., i] >> (_WORD - shift)
    words = words.reshape(*v.shape[:-2], nblocks * bits)[..., : -(-n * bits // _WORD)]
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # two's complement
    return words.movedim(-1, dim).contiguous()


def unpack_stream(words: torch.Tensor, bits: int, n: int, dim: int) -> torch.Tensor:
    """Inverse of pack_stream: the first n codes along `dim` as uint8."""
    w = words.movedim(dim, -1).to(torch.int64) & 0xFFFFFFFF
    nblocks = -(-n // _WORD)
    if w.shape[-1] < -(-n * bits // _WORD):
        raise ValueError(f"{w.shape[-1]} words cannot hold {n} codes of {bits} bits")
    w = torch.nn.functional.pad(w, (0, nblocks * bits - w.shape[-1]))[..., : nblocks * bits]
    w = w.reshape(*w.shape[:-1], nblocks, bits)
    codes = torch.zeros(*w.shape[:-1], _WORD, dtype=torch.int64)
    for i in range(_WORD):
        word, shift = divmod(i * bits, _WORD)
        c = w[..., word] >> shift
        if shift + bits > _WORD:
            c = c | (w[..., word + 1] << (_WORD - shift))
        codes[..., i] = c & (2**bits - 1)
    codes = codes.reshape(*codes.shape[:-2], nblocks * _WORD)[..., :n]
    return codes.to(torch.uint8).movedim(-1, dim)
