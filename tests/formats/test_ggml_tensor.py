"""round_ggml by blocks of rows (formats/ggml_tensor.py) against one whole-matrix call of the
block quantizer and gguf-py's decoder: chunking, a float16 input, in-place rounding and
values decoded on demand change no byte."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from lowbit.formats import ggml_blocks, ggml_tensor
from lowbit.formats.ggml_tensor import GGMLGrid, round_ggml


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K, T.Q8_0])
def test_rounding_by_blocks_of_rows_equals_one_call(qtype, monkeypatch):
    W = torch.randn(37, 512, generator=torch.Generator().manual_seed(0)).half()  # a checkpoint's fp16
    imp = np.exp(np.random.default_rng(1).standard_normal(512)).astype(np.float32)
    whole = ggml_blocks.quantize(W.float().numpy(), qtype, imp).reshape(37, -1)
    decoded = gguf.quants.dequantize(whole, qtype).reshape(37, 512)
    monkeypatch.setattr(ggml_tensor, "ROUND_CHUNK", 5 * 512)  # 5 rows at a time, a partial last block
    t = round_ggml(W, qtype, imp)
    np.testing.assert_array_equal(t.blocks, whole)
    np.testing.assert_array_equal(t.values.numpy(), decoded)
    lazy = round_ggml(W, qtype, imp, values=False)
    assert lazy.values is None and lazy.shape == (37, 512)
    np.testing.assert_array_equal(lazy.dequantize().numpy(), decoded)
    inplace = W.float().clone()
    got = round_ggml(inplace, qtype, imp, into=inplace)
    np.testing.assert_array_equal(got.blocks, whole)
    np.testing.assert_array_equal(inplace.numpy(), decoded)


def test_rows_joined_decode_on_demand():
    W = torch.randn(8, 256, generator=torch.Generator().manual_seed(2))
    grid = GGMLGrid(T.Q4_K)
    parts = [round_ggml(W[:3], T.Q4_K), round_ggml(W[3:], T.Q4_K)]
    joined = grid.join_rows(parts)
    assert joined.shape == (8, 256) and joined.stored_bytes() == 8 * 144
    np.testing.assert_array_equal(joined.dequantize().numpy(), round_ggml(W, T.Q4_K).values.numpy())
