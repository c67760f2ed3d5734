"""Bit packing: hand-worked words, and exact round trips for every bit width."""
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.formats import pack_stream, pack_words, unpack_stream, unpack_words


def test_hand_worked_words():
    # 8-bit codes 129, 130 -> 129 + 130 * 256 = 33409 (compressed-tensors' own example)
    assert pack_words(torch.tensor([[129, 130]]), 8).tolist() == [[33409]]
    # 4-bit codes 0..7 -> nibble i at bits 4i: 0x76543210
    assert pack_words(torch.arange(8)[None], 4).tolist() == [[0x76543210]]
    # the top nibble set makes a negative int32 (two's complement)
    assert pack_words(torch.tensor([[0, 0, 0, 0, 0, 0, 0, 15]]), 4).tolist() == [[-(2**28)]]
    # 3-bit: 10 codes per word
    assert pack_words(torch.full((1, 10), 7), 3).tolist() == [[2**30 - 1]]


def test_hand_worked_stream():
    # 3-bit codes 1, 2, 3 -> bits 001 | 010 | 011 little-endian -> 0b011_010_001 = 209 in word 0
    assert pack_stream(torch.tensor([[1, 2, 3]]), 3, dim=1).tolist() == [[0b11010001]]
    # eleven 3-bit 7s: code 10 straddles words 0 and 1 (bits 30..32)
    assert pack_stream(torch.full((1, 11), 7), 3, dim=1).tolist() == [[-1, 1]]


def _numpy_words(values: np.ndarray, bits: int) -> np.ndarray:
    per = 32 // bits
    rows, n = values.shape
    words = np.zeros((rows, -(-n // per)), dtype=np.uint64)
    for r in range(rows):
        for k in range(n):
            words[r, k // per] |= np.uint64(int(values[r, k]) << ((k % per) * bits))
    return words.astype(np.uint32).view(np.int32)


@settings(max_examples=80, deadline=None)
@given(bits=st.integers(1, 8), rows=st.integers(1, 4), n=st.integers(1, 70), seed=st.integers(0, 9999))
def test_words_round_trip_and_match_numpy(bits, rows, n, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(0, 2**bits, (rows, n), generator=g)
    packed = pack_words(v, bits, dim=1)
    np.testing.assert_array_equal(packed.numpy(), _numpy_words(v.numpy(), bits))
    assert torch.equal(unpack_words(packed, bits, n, dim=1), v.to(torch.uint8))
    packed0 = pack_words(v.T.contiguous(), bits, dim=0)
    assert torch.equal(unpack_words(packed0, bits, n, dim=0), v.T.to(torch.uint8))


def _numpy_stream(values: np.ndarray, bits: int) -> np.ndarray:
    """Bit k*bits+b of the stream is bit b of code k; 32 bits per little-endian int32 word."""
    n = values.shape[-1]
    bitstream = np.zeros(-(-n * bits // 32) * 32, dtype=np.uint8)
    for k in range(n):
        for b in range(bits):
            bitstream[k * bits + b] = (int(values[k]) >> b) & 1
    return np.packbits(bitstream, bitorder="little").view("<u4").view(np.int32)


@settings(max_examples=80, deadline=None)
@given(bits=st.integers(1, 8), rows=st.integers(1, 3), n=st.integers(1, 200), seed=st.integers(0, 9999))
def test_stream_is_dense_round_trips_and_matches_numpy(bits, rows, n, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(0, 2**bits, (rows, n), generator=g)
    data = pack_stream(v, bits, dim=1)
    assert data.shape == (rows, -(-n * bits // 32))
    for r in range(rows):
        np.testing.assert_array_equal(data[r].numpy(), _numpy_stream(v[r].numpy(), bits))
    assert torch.equal(unpack_stream(data, bits, n, dim=1), v.to(torch.uint8))
    assert torch.equal(unpack_stream(pack_stream(v.T, bits, dim=0), bits, n, dim=0), v.T.to(torch.uint8))
