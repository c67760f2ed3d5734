"""MXFP4 against compressed-tensors 0.20's own scale generation, FP4 rounding, packing and
decompression, against llama.cpp's C quantizer and gguf-py for GGUF type MXFP4 (test-only
oracles), by hand, and GPTQ on the MXFP4 grid."""
import ctypes

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from lowbit.formats import MXFP4Grid, MXFP4Tensor, from_named, to_named
from lowbit.formats import ggml_blocks
from lowbit.formats.mxfp4 import exponents, round_ggml
from lowbit.formats.e2m1 import e2m1_values
from lowbit.methods.gptq_solver import gptq_on_grid
from peers import installed_llama_cpp_lib
from gptq_checks import correlated_hessian, output_error


def _weights(seed=0, rows=48, cols=320):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 0.1
    W[3, :32] = 0                                         # an all-zero block
    W[4, :32] = 0.25 * torch.randint(-24, 25, (32,), generator=g).float()   # ties of the e2m1 grid
    W[5, :32] = 2.0 ** torch.randint(-6, 3, (32,), generator=g).float()      # powers of two
    W[6, 32:64] = 1.75 * 2.0 ** -3                        # amax exactly at the round-up threshold
    return W


def test_scale_and_codes_by_hand():
    W = torch.zeros(1, 32)
    W[0, :4] = torch.tensor([3.0, -0.7, 0.3, -0.1])
    t = MXFP4Grid("ocp").rtn(W)
    # amax 3 -> floor(log2 3) = 1 -> scale 2 ** (1 - 2) = 0.5; 3 / 0.5 = 6, -0.7 / 0.5 = -1.4 -> -1.5
    assert t.exponent.item() == 127 - 1
    assert e2m1_values()[t.codes[0, :4].long()].tolist() == [6.0, -1.5, 0.5, -0.0]
    assert t.codes[0, 3].item() == 8  # -0.2 rounds to -0: compressed-tensors keeps the sign bit
    assert round_ggml(torch.tensor([-0.2, 0.25, 0.75, 2.5, -5.0, 7.9])).tolist() == [0, 0, 1, 4, 8 + 6, 7]


def test_bits_per_weight_and_state_round_trip():
    t = MXFP4Grid().rtn(_weights())
    assert t.bits_per_weight() == pytest.approx(4.25)
    back = from_named(*to_named(t))
    assert isinstance(back, MXFP4Tensor) and torch.equal(back.dequantize(), t.dequantize())


def test_equals_compressed_tensors_scales_rounding_packing_and_decompression():
    ct = pytest.importorskip("compressed_tensors", reason="compressed-tensors (a test dependency) is not installed")
    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.quant_scheme import MXFP4A16
    from compressed_tensors.quantization.utils import calculate_qparams

    from lowbit.io.compressed_tensors import pack_tensor

    W = _weights()
    args = MXFP4A16["weights"]
    args = args if isinstance(args, QuantizationArgs) else QuantizationArgs(**args)
    groups = W.reshape(W.shape[0], -1, 32)
    scale, zero = calculate_qparams(groups.amin(2), groups.amax(2), args)
    ours = MXFP4Grid("ocp").rtn(W)
    assert torch.equal(ours.block_scale(), scale.float())
    q = quantize(W, scale, zero, args)
    assert torch.equal(e2m1_values()[ours.codes.long()], q.float())  # codes in e2m1 units
    stored = pack_tensor("m", ours, torch.float32)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    back = MXFP4PackedCompressor.decompress({"weight_packed": stored["m.weight_packed"],
                                             "weight_scale": stored["m.weight_scale"]}, scheme)["weight"]
    assert torch.equal(back.float(), ours.dequantize().to(back.dtype).float())
    assert ct is not None


def test_gguf_blocks_equal_gguf_py_and_decode_back():
    W = _weights().numpy()
    ours = ggml_blocks.quantize(W, T.MXFP4)
    assert np.array_equal(ours, gq.quantize(W, T.MXFP4))
    dec = gq.dequantize(ours, T.MXFP4)
    assert np.array_equal(dec, MXFP4Grid("ggml").rtn(torch.from_numpy(W)).dequantize().numpy())
    # the ggml exponent comes from amax as it is, compressed-tensors' from amax rounded up
    e_ggml, e_ocp = exponents(torch.from_numpy(W), "ggml"), exponents(torch.from_numpy(W), "ocp")
    assert e_ggml[6, 1].item() + 1 == e_ocp[6, 1].item()


@pytest.mark.skipif(installed_llama_cpp_lib() is None, reason="llama.cpp peer venv not found")
def test_gguf_blocks_equal_llama_cpp_c_code():
    fn = ctypes.CDLL(str(installed_llama_cpp_lib())).ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_void_p]
    for seed in range(4):
        W = np.ascontiguousarray(_weights(seed).numpy())
        want = np.zeros((W.shape[0], W.shape[1] // 32 * 17), np.uint8)
        fn(int(T.MXFP4), W.ctypes.data_as(ctypes.c_void_p), want.ctypes.data_as(ctypes.c_void_p), 0,
           W.shape[0], W.shape[1], None)
        assert np.array_equal(ggml_blocks.quantize(W, T.MXFP4), want)


@pytest.mark.parametrize("style", ["ocp", "ggml"])
def test_gptq_on_mxfp4_beats_rtn_on_output_error(style):
    H = correlated_hessian()
    W = torch.randn(96, 256) * 0.05
    grid = MXFP4Grid(style)
    rtn, gptq = grid.rtn(W), gptq_on_grid(W, H, grid, act_order=True, fit="static")
    assert torch.equal(gptq.exponent, rtn.exponent)

    assert output_error(W, gptq.dequantize(), H) < 0.7 * output_error(W, rtn.dequantize(), H)
