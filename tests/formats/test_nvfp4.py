"""NVFP4 against compressed-tensors 0.20's own scale generation, FP4 rounding, packing and
decompression (test-only oracle), by hand, and GPTQ on the NVFP4 grid."""
import pytest
import torch

from lowbit.formats import NVFP4Grid, NVFP4Tensor, from_named, to_named
from lowbit.formats.e2m1 import e2m1_values, round_e2m1
from lowbit.methods.gptq_solver import gptq_on_grid
from gptq_checks import correlated_hessian, output_error

pytest.importorskip("compressed_tensors", reason="compressed-tensors (a test dependency) is not installed")


def _args():
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.quant_scheme import NVFP4A16
    return NVFP4A16["weights"] if isinstance(NVFP4A16["weights"], QuantizationArgs) else QuantizationArgs(**NVFP4A16["weights"])


def test_e2m1_rounding_by_hand_ties_to_even():
    x = torch.tensor([0.25, 0.26, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.1, 9.0, -0.1, -1.75, -7.0])
    codes = round_e2m1(x)
    values = e2m1_values()[codes.long()]
    assert values.tolist() == [0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 0.0, -2.0, -6.0]
    assert codes[10].item() == 8  # -0.1 rounds to -0: the sign bit stays, as compressed-tensors packs it


def test_rounding_equals_compressed_tensors_cast_to_fp4():
    from compressed_tensors.quantization.utils.fp4_utils import cast_to_fp4

    x = torch.linspace(-7, 7, 2801)  # every tie of the grid is on this lattice (step 0.005)
    assert torch.equal(e2m1_values()[round_e2m1(x).long()], cast_to_fp4(x.clone()))


def test_scales_codes_and_bytes_equal_compressed_tensors():
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8
    from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

    torch.manual_seed(0)
    W = torch.randn(48, 160) * torch.rand(48, 1) * 2
    W[5, :16] = 0  # an all-zero block
    args = _args()
    g = generate_gparam(W.amin(), W.amax())
    groups = W.reshape(48, 10, 16)
    scale, zero = calculate_qparams(groups.amin(2), groups.amax(2), args, global_scale=g)
    ours = NVFP4Grid().rtn(W)
    assert torch.equal(ours.global_scale, g.float())
    assert torch.equal(ours.scale.float(), scale.float())
    q = quantize(W, scale, zero, args, global_scale=g)
    assert torch.equal(e2m1_values()[ours.codes.long()], q.float())
    from lowbit.io.compressed_tensors import pack_tensor
    packed = pack_tensor("m", ours, torch.float32)["m.weight_packed"]
    assert torch.equal(packed, pack_fp4_to_uint8(q))
    back = dequantize(q, scale, zero, args, global_scale=g, dtype=torch.float32)
    assert torch.equal(ours.dequantize(), back)


def test_bits_per_weight_by_hand():
    W = torch.randn(64, 256)
    t = NVFP4Grid().rtn(W)
    n = W.numel()
    assert t.stored_bytes() == n // 2 + n // 16 + 4
    assert t.bits_per_weight() == pytest.approx(4 + 8 / 16 + 32 / n)
    back = from_named(*to_named(t))
    assert isinstance(back, NVFP4Tensor) and torch.equal(back.dequantize(), t.dequantize())


def test_gptq_on_nvfp4_beats_rtn_on_output_error():
    H = correlated_hessian()
    W = torch.randn(96, 256) * 0.05
    grid = NVFP4Grid()
    rtn, gptq = grid.rtn(W), gptq_on_grid(W, H, grid, act_order=True, fit="static")
    assert torch.equal(gptq.scale.float(), rtn.scale.float()) and torch.equal(gptq.global_scale, rtn.global_scale)

    assert output_error(W, gptq.dequantize(), H) < 0.7 * output_error(W, rtn.dequantize(), H)
