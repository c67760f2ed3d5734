"""llama.cpp's rounding of a Linear's inputs (formats/ggml_activations.py).

Oracles: gguf-py quantizes and decodes Q8_0 blocks (the same block format llama.cpp's
quantize_row_q8_0 writes for activations); Q8_K, which gguf-py does not write, against a
plain numpy transcription of quantize_row_q8_K_ref's arithmetic and a hand-worked block.
"""
import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from lowbit.formats.ggml_activations import input_rounding, round_q8_0, round_q8_k


def test_q8_0_inputs_equal_gguf_py_blocks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 96, generator=g) * torch.logspace(-3, 2, 96)  # blocks of very unequal range
    x[0, 0, :32] = 0  # an all-zero block keeps d = 0
    ref = gguf.quants.dequantize(gguf.quants.quantize(x.numpy().reshape(-1, 96), T.Q8_0), T.Q8_0)
    got = round_q8_0(x)
    assert got.shape == x.shape and got.dtype == x.dtype
    np.testing.assert_array_equal(got.numpy().reshape(-1, 96), ref)
    assert float((got - x).abs().max()) > 0  # it does round


def q8_k_reference(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x, dtype=np.float32)
    for i, b in enumerate(x.reshape(-1, 256).astype(np.float32)):
        j = int(np.argmax(np.abs(b)))
        if b[j] == 0:
            out.reshape(-1, 256)[i] = 0
            continue
        iscale = np.float32(-127.0) / b[j]
        q = np.minimum(127, np.rint(iscale * b))  # nearest_int rounds half to even
        out.reshape(-1, 256)[i] = q * (np.float32(1) / iscale)
    return out


def test_q8_k_inputs_follow_llamacpp_arithmetic():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 512, generator=g) * 2
    x[1, 256:] = 0
    np.testing.assert_allclose(round_q8_k(x).numpy(), q8_k_reference(x.numpy()), rtol=0, atol=1e-6)
    # hand-worked block: largest magnitude -2.54 (negative) -> iscale -127 / -2.54 = 50, d 0.02;
    # 1.0 -> code 50 -> 1.0; 0.013 -> 0.65 -> 1 -> 0.02; -2.54 -> -127 -> -2.54
    b = torch.zeros(256)
    b[:3] = torch.tensor([-2.54, 1.0, 0.013])
    got = round_q8_k(b)
    np.testing.assert_allclose(got[:3].numpy(), [-2.54, 1.0, 0.02], rtol=1e-6)
    assert torch.all(got[3:] == 0)


def test_input_rounding_by_weight_type():
    assert input_rounding(T.Q8_0) is round_q8_0 and input_rounding(T.Q5_1) is round_q8_0
    assert input_rounding(T.Q4_K) is round_q8_k and input_rounding(T.Q6_K) is round_q8_k
    assert input_rounding(T.F32) is None
    x = torch.tensor([1 + 2 ** -12])
    assert input_rounding(T.F16)(x).item() == 1.0  # below half precision's step at 1
    with pytest.raises(ValueError, match="multiple of the 32"):
        round_q8_0(torch.ones(40))
