"""FP8 grids against compressed-tensors' own quantize / dequantize / calculate_qparams (test-only
oracle), by hand, and GPTQ on the FP8 grid through the same solver as every other grid."""
import pytest
import torch

from lowbit.formats import FP8Grid, FP8Tensor, from_named, to_named
from lowbit.methods.gptq_solver import gptq_on_grid
from gptq_checks import correlated_hessian, output_error


def _ct():
    pytest.importorskip("compressed_tensors", reason="compressed-tensors (a test dependency) is not installed")
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize
    from compressed_tensors.quantization.utils import calculate_qparams
    return QuantizationArgs, quantize, dequantize, calculate_qparams


def test_a_row_by_hand():
    # amax 224 -> scale 224 / 448 = 0.5; e4m3 has 3 mantissa bits: 1.3 -> 1.25, 98.3 -> 96 (spacing 8 above 64)
    w = torch.tensor([[224.0, 0.65, -49.15, 0.0]])
    t = FP8Grid(-1).rtn(w)
    assert t.scale.tolist() == [[0.5]]
    assert t.codes.float().tolist() == [[448.0, 1.25, -96.0, 0.0]]
    assert t.dequantize().tolist() == [[224.0, 0.625, -48.0, 0.0]]
    assert t.codes.dtype == torch.float8_e4m3fn and t.describe() == "fp8 e4m3 per channel"
    e5 = FP8Grid(-1, "e5m2").rtn(w)  # 2 mantissa bits, max 57344
    assert e5.scale.item() == pytest.approx(224 / 57344) and e5.codes.dtype == torch.float8_e5m2


@pytest.mark.parametrize("block", [0, -1])
def test_scales_and_codes_equal_compressed_tensors(block):
    QuantizationArgs, quantize, dequantize, calculate_qparams = _ct()
    torch.manual_seed(0)
    W = torch.randn(96, 200) * torch.rand(96, 1) * 3
    strategy = "tensor" if block == 0 else "channel"
    args = QuantizationArgs(num_bits=8, type="float", strategy=strategy, symmetric=True)
    dims = None if block == 0 else 1
    lo = W.amin() if dims is None else W.amin(dim=1, keepdim=True)
    hi = W.amax() if dims is None else W.amax(dim=1, keepdim=True)
    scale, zero = calculate_qparams(lo.reshape(-1, 1) if block else lo.reshape(1), hi.reshape(-1, 1) if block else hi.reshape(1), args)
    ours = FP8Grid(block).rtn(W)
    assert torch.equal(ours.scale.reshape(-1), scale.reshape(-1).float())
    codes = quantize(W, scale.reshape(ours.scale.shape if block else (1,)), zero, args, dtype=torch.float8_e4m3fn)
    assert torch.equal(ours.codes.view(torch.uint8), codes.view(torch.uint8))
    back = dequantize(codes, scale.reshape(ours.scale.shape if block else (1,)), zero, args)
    assert torch.equal(ours.dequantize(), back.float())


def test_blocks_of_128_with_partial_tiles_equal_compressed_tensors():
    QuantizationArgs, quantize, dequantize, _ = _ct()
    torch.manual_seed(1)
    W = torch.randn(200, 300)
    W[150:, 260:] *= 50  # the last tile's own range
    ours = FP8Grid(128).rtn(W)
    assert ours.scale.shape == (2, 3)
    assert ours.scale[1, 2].item() == pytest.approx(W[128:, 256:].abs().max().item() / 448, rel=1e-6)
    args = QuantizationArgs(num_bits=8, type="float", strategy="block", block_structure=[128, 128], symmetric=True)
    theirs = dequantize(ours.codes, ours.scale, None, args)
    assert torch.equal(ours.dequantize(), theirs.float())
    codes = quantize(W, ours.scale, None, args, dtype=torch.float8_e4m3fn)
    assert torch.equal(ours.codes.view(torch.uint8), codes.view(torch.uint8))


def test_bits_per_weight_by_hand():
    W = torch.randn(256, 512)
    assert FP8Grid(-1).rtn(W).stored_bytes() == 256 * 512 + 4 * 256
    assert FP8Grid(0).rtn(W).bits_per_weight() == pytest.approx(8 + 32 / (256 * 512))
    assert FP8Grid(128).rtn(W).stored_bytes() == 256 * 512 + 4 * 2 * 4


def test_state_round_trip():
    for block in (0, -1, 128):
        t = FP8Grid(block).rtn(torch.randn(130, 256))
        back = from_named(*to_named(t))
        assert isinstance(back, FP8Tensor) and back.block == block
        assert torch.equal(back.dequantize(), t.dequantize())


@pytest.mark.parametrize("block", [0, -1, 128])
def test_gptq_on_fp8_beats_rtn_on_output_error(block):
    H = correlated_hessian()
    W = torch.randn(160, 256) * 0.05
    grid = FP8Grid(block)
    rtn, gptq = grid.rtn(W), gptq_on_grid(W, H, grid, act_order=True, fit="static")
    assert isinstance(gptq, FP8Tensor) and torch.equal(gptq.scale, rtn.scale)  # scales from the float weights

    assert output_error(W, gptq.dequantize(), H) < 0.8 * output_error(W, rtn.dequantize(), H)


def test_per_token_fp8_activations_equal_compressed_tensors():
    QuantizationArgs, _, _, _ = _ct()
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp

    from lowbit.formats.act_quant import fp8_per_token

    torch.manual_seed(2)
    x = torch.randn(2, 7, 96) * torch.rand(2, 7, 1) * 10
    x[1, 3] = 0  # an all-zero token stays zero
    args = QuantizationArgs(num_bits=8, type="float", strategy="token", dynamic=True, symmetric=True)
    scale, zero = compute_dynamic_scales_and_zp(x, args, module=torch.nn.Linear(96, 4))
    theirs = fake_quantize(x, scale, zero, args)
    ours = fp8_per_token(x)
    assert torch.equal(ours, theirs)
    assert torch.equal(ours[1, 3], torch.zeros(96))
    # by hand: a token with amax 448 keeps its own scale 1, so values round straight to e4m3
    t = torch.tensor([[448.0, 1.3, -98.3]])
    assert fp8_per_token(t).tolist() == [[448.0, 1.25, -96.0]]
