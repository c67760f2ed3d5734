"""NF4 with double quantization against bitsandbytes' own quantize_4bit (test-only oracle), by
hand, and GPTQ on the NF4 grid through the same solver as every other grid."""
import math

import pytest
import torch

from lowbit.formats import NF4Grid, NF4Tensor, from_named, to_named
from lowbit.formats.nf4 import NF4_VALUES, code_book, dynamic_code
from lowbit.methods.gptq_solver import gptq_on_grid
from gptq_checks import correlated_hessian, output_error


def _bnb():
    return pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes (a test dependency) is not installed")


def _packed(codes: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' packing: two codes per byte, the first in the high nibble."""
    flat = codes.reshape(-1)
    return (flat[::2] << 4) | flat[1::2]


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("seed,scale", [(0, 1.0), (1, 0.02), (2, 3e-4)])
def test_codes_and_absmax_equal_bitsandbytes(double_quant, seed, scale):
    F = _bnb()
    torch.manual_seed(seed)
    W = torch.randn(384, 1000) * scale  # rows of 1000: blocks of 64 span rows, the last is partial
    W[7, 3] = 40 * scale  # an outlier: its block's absmax, and the nested block's range
    q, state = F.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    ours = NF4Grid(64, double_quant).rtn(W)
    assert torch.equal(_packed(ours.codes), q.reshape(-1))
    if double_quant:
        assert torch.equal(ours.qabsmax, state.absmax.reshape(-1))
        assert torch.equal(ours.absmax2, state.state2.absmax.reshape(-1))
        assert ours.offset.item() == state.offset.item()
    else:
        assert torch.equal(ours.absmax, state.absmax.reshape(-1))
    assert torch.equal(ours.dequantize(), F.dequantize_4bit(q, state))


def test_code_books_equal_bitsandbytes():
    F = _bnb()
    assert torch.equal(dynamic_code(), F.create_dynamic_map(signed=True))
    assert torch.equal(torch.tensor(NF4_VALUES), F.get_4bit_type("nf4", device="cpu"))


def test_bits_per_weight_by_hand():
    W = torch.randn(4096, 4096)
    n = W.numel()
    dq = NF4Grid(64, True).rtn(W)
    # 4-bit codes, one 8-bit absmax per 64, one float32 absmax per 256 absmax values, the float32
    # mean, and the code books a bitsandbytes file holds per tensor (16 + 256 float32)
    assert dq.stored_bytes() == n // 2 + n // 64 + 4 * math.ceil(n / 64 / 256) + 4 + 16 * 4 + 256 * 4
    assert round(4 + 8 / 64 + 32 / (64 * 256), 3) == 4.127
    assert dq.bits_per_weight() == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-3)
    plain = NF4Grid(64, False).rtn(W)
    assert plain.stored_bytes() == n // 2 + 4 * (n // 64) + 16 * 4
    assert plain.bits_per_weight() == pytest.approx(4.5, abs=1e-4)


def test_a_block_by_hand():
    # one block of 64: absmax 2, the weights are 2 x each code value (and points just beside them)
    values = torch.tensor(NF4_VALUES)
    w = torch.cat([2 * values, 2 * values * 0.999, 2 * values * 0.999, 2 * values]).reshape(1, 64)
    t = NF4Grid(64, double_quant=False).rtn(w)
    assert t.absmax.tolist() == [2.0]
    assert t.codes.reshape(-1).tolist() == list(range(16)) * 4
    mid = torch.tensor([[0.5 * (values[9] + values[10]) * 2 + 1e-4] + [2.0] + [0.0] * 62])
    assert NF4Grid(64, False).rtn(mid).codes[0, 0].item() == 10  # past the midpoint: the upper value


def test_state_round_trip():
    W = torch.randn(64, 256)
    for dq in (True, False):
        t = NF4Grid(64, dq).rtn(W)
        back = from_named(*to_named(t))
        assert isinstance(back, NF4Tensor) and torch.equal(back.dequantize(), t.dequantize())


def test_gptq_on_nf4_beats_rtn_on_output_error():
    torch.manual_seed(0)
    X = torch.randn(2048, 200) @ torch.randn(200, 200) * 0.3  # correlated inputs; rows of 200 span blocks
    H = 2 * X.T @ X / X.shape[0]
    W = torch.randn(128, 200) * 0.05
    grid = NF4Grid(64, True)
    rtn = grid.rtn(W)
    gptq = gptq_on_grid(W, H, grid, act_order=True, fit="static")
    assert isinstance(gptq, NF4Tensor)
    # the stored grid is the same (fitted from the same weights); only the codes differ
    assert torch.equal(gptq.qabsmax, rtn.qabsmax)

    assert output_error(W, gptq.dequantize(), H) < 0.7 * output_error(W, rtn.dequantize(), H)


def test_a_last_partial_block_equals_bitsandbytes():
    F = _bnb()
    torch.manual_seed(3)
    W = torch.randn(37, 100)  # 3700 weights: 57 blocks of 64 and one of 52
    for dq in (True, False):
        q, state = F.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=dq)
        ours = NF4Grid(64, dq).rtn(W)
        assert torch.equal(_packed(ours.codes), q.reshape(-1))
        assert torch.equal(ours.dequantize(), F.dequantize_4bit(q, state))


def test_fp4_code_book_is_bitsandbytes_e2m1_by_hand():
    F = _bnb()
    code = code_book("fp4")
    assert torch.equal(code, F.get_4bit_type("fp4", device="cpu"))  # what a bnb file's quant_map holds
    # e2m1 divided by its maximum 12: codes 0..7 and their negatives (8..15), bit-pattern order
    by_hand = [0, 1 / 192, 2 / 3, 1, 1 / 3, 1 / 2, 1 / 6, 1 / 4]
    assert torch.allclose(code[:8], torch.tensor(by_hand), rtol=1e-7, atol=0)
    assert torch.equal(code[8:], -code[:8])


@pytest.mark.parametrize("double_quant", [True, False])
def test_fp4_codes_and_absmax_equal_bitsandbytes_but_at_its_rounded_midpoints(double_quant):
    """bitsandbytes' CPU quantize_4bit rounds FP4 against a 4-decimal copy of the code book
    (0.6667 for 2/3): lowbit rounds to the exact code its files record, so the two may differ
    only for scaled weights within 1e-4 of a midpoint."""
    F = _bnb()
    torch.manual_seed(5)
    W = torch.randn(256, 1000)
    W[3, 9] = 30.0
    q, state = F.quantize_4bit(W, blocksize=64, quant_type="fp4", compress_statistics=double_quant)
    ours = NF4Grid(64, double_quant, quant_type="fp4").rtn(W)
    theirs = torch.stack([q.reshape(-1) >> 4, q.reshape(-1) & 0xF], 1).reshape(-1)[: W.numel()]
    differ = (ours.codes.reshape(-1) != theirs).nonzero().reshape(-1)
    assert differ.numel() < 1e-3 * W.numel()
    absmax = ours.block_absmax()
    blocks = W.reshape(-1)
    scaled = blocks / absmax.repeat_interleave(64)[: W.numel()]
    code = code_book("fp4")
    ordered = code.sort().values
    mids = (ordered[:-1] + ordered[1:]) / 2
    near = (scaled[differ, None] - mids[None]).abs().min(1).values
    assert (near < 1e-4).all(), near.max()
    if double_quant:
        assert torch.equal(ours.qabsmax, state.absmax.reshape(-1))
        assert torch.equal(ours.absmax2, state.state2.absmax.reshape(-1))
    else:
        assert torch.equal(ours.absmax, state.absmax.reshape(-1))
    # bitsandbytes decodes lowbit's codes (packed as it packs them) to lowbit's values, up to its
    # 4-decimal code book: |error| <= absmax * 4e-5
    mine = ours.dequantize()
    got = F.dequantize_4bit(_packed(ours.codes).reshape(-1, 1).to(torch.uint8), state)
    tol = (absmax.repeat_interleave(64)[: W.numel()] * 4e-5).reshape(W.shape)
    assert ((got - mine).abs() <= tol).all()


def test_fp4_a_block_by_hand():
    code = code_book("fp4")
    w = torch.cat([3 * code, 3 * code * 0.999, 3 * code * 0.999, 3 * code]).reshape(1, 64)
    t = NF4Grid(64, double_quant=False, quant_type="fp4").rtn(w)
    assert t.absmax.tolist() == [3.0]
    # every code is its own nearest value, but -0 and +0 are one value: both go to +0 (code 0)
    expect = [0] + list(range(1, 8)) + [0] + list(range(9, 16))
    assert t.codes.reshape(-1).tolist() == expect * 4
    back = from_named(*to_named(t))
    assert back.quant_type == "fp4" and torch.equal(back.dequantize(), t.dequantize())
    assert t.describe() == "fp4 b64"


def test_gptq_on_fp4_beats_rtn_on_output_error():
    H = correlated_hessian()
    W = torch.randn(96, 256) * 0.05
    grid = NF4Grid(64, True, quant_type="fp4")
    rtn, gptq = grid.rtn(W), gptq_on_grid(W, H, grid, act_order=True, fit="static")
    assert gptq.quant_type == "fp4" and torch.equal(gptq.qabsmax, rtn.qabsmax)

    assert output_error(W, gptq.dequantize(), H) < 0.7 * output_error(W, rtn.dequantize(), H)
