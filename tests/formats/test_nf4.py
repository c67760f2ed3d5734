"""NF4 with double quantization against bitsandbytes' own quantize_4bit (test-only oracle), by
hand, and GPTQ on the NF4 grid through the same solver as every other grid."""
import math

import pytest
import torch

from lowbit.formats import NF4Grid, NF4Tensor, from_named, to_named
from lowbit.formats.nf4 import NF4_VALUES, dynamic_code
from lowbit.methods.gptq_solver import gptq_on_grid


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

    def err(Q):
        D = W - Q
        return torch.trace(D @ H @ D.T).item()
    assert err(gptq.dequantize()) < 0.7 * err(rtn.dequantize())


def test_a_last_partial_block_equals_bitsandbytes():
    F = _bnb()
    torch.manual_seed(3)
    W = torch.randn(37, 100)  # 3700 weights: 57 blocks of 64 and one of 52
    for dq in (True, False):
        q, state = F.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=dq)
        ours = NF4Grid(64, dq).rtn(W)
        assert torch.equal(_packed(ours.codes), q.reshape(-1))
        assert torch.equal(ours.dequantize(), F.dequantize_4bit(q, state))
