"""Integer grids against hand-worked figures and an independent numpy reference."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.formats import dequantize, error_metrics, fit_grid, quantize_rtn
from lowbit.formats.int_affine import column_groups

W = torch.tensor([[0.32, -1.54, 0.87, -0.21, 1.23, -0.76, 0.05, -1.91]])


def test_symmetric_int8_hand_worked():
    qt = quantize_rtn(W, 8, symmetric=True, group_size=0)
    assert float(qt.scale) == pytest.approx(0.015039, abs=1e-6)
    assert qt.signed_codes().tolist() == [[21, -102, 58, -14, 82, -51, 3, -127]]
    assert error_metrics(W, qt.dequantize())["max_abs"] == pytest.approx(0.007008, abs=1e-6)


def test_asymmetric_int4_hand_worked():
    qt = quantize_rtn(W, 4, symmetric=False, group_size=0)
    assert float(qt.scale) == pytest.approx(0.2093, abs=1e-4)
    assert float(qt.zero) == 9
    assert qt.q.tolist() == [[11, 2, 13, 8, 15, 5, 9, 0]]
    assert error_metrics(W, qt.dequantize())["max_abs"] == pytest.approx(0.0987, abs=1e-4)


def test_per_group_int4_hand_worked():
    qt = quantize_rtn(W, 4, symmetric=False, group_size=4)
    assert qt.scale.shape == (1, 2)
    assert error_metrics(W, qt.dequantize())["max_abs"] == pytest.approx(0.0773, abs=1e-4)


def _numpy_rtn(w: np.ndarray, bits: int, sym: bool, group: int) -> np.ndarray:
    """Independent reference: loop over rows and groups, partial last group included."""
    out = np.empty_like(w, dtype=np.float64)
    rows, cols = w.shape
    g = cols if group == -1 else group
    for r in range(rows):
        for c0 in range(0, cols, g):
            x = w[r, c0:c0 + g].astype(np.float64)
            lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
            if sym:
                s = max(abs(lo), hi) / (2 ** (bits - 1) - 1)
                s = s if s > 0 else 1.0
                z = 2 ** (bits - 1)
            else:
                s = (hi - lo) / (2 ** bits - 1)
                s = s if s > 0 else 1.0
                z = min(max(np.round(-lo / s), 0), 2 ** bits - 1)
            q = np.clip(np.round(x / s) + z, 0, 2 ** bits - 1)
            out[r, c0:c0 + g] = (q - z) * s
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group", [-1, 32, 48])
def test_matches_numpy_reference_with_partial_groups(bits, sym, group):
    torch.manual_seed(bits * 10 + group)
    w = torch.randn(6, 80)  # 80 = 2.5 x 32: the last group of 32 is partial
    qt = quantize_rtn(w, bits, sym, group)
    ref = _numpy_rtn(w.numpy(), bits, sym, group)
    np.testing.assert_allclose(qt.dequantize().numpy(), ref, rtol=1e-5, atol=1e-6)
    assert qt.scale.shape == (6, 1 if group == -1 else -(-80 // group))


def test_per_tensor_single_scale():
    w = torch.randn(4, 16)
    qt = quantize_rtn(w, 8, True, 0)
    assert qt.scale.shape == (1, 1)
    assert float(qt.scale) == pytest.approx(float(w.abs().max()) / 127, rel=1e-6)


def test_sqnr_grows_about_6db_per_bit():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    s4 = error_metrics(w, quantize_rtn(w, 4, True, 64).dequantize())["sqnr_db"]
    s8 = error_metrics(w, quantize_rtn(w, 8, True, 64).dequantize())["sqnr_db"]
    assert 20 < s8 - s4 < 28  # ~6.02 dB per bit
    assert s4 > 15


def test_mse_clipping_never_worse_and_usually_better():
    torch.manual_seed(1)
    w = torch.randn(32, 256) * torch.rand(32, 1)
    w[0, 0] = 12.0  # an outlier makes the minmax grid coarse
    g_idx = column_groups(256, 128)
    for sym in (True, False):
        errs = {}
        for clip in ("minmax", "mse"):
            s, z = fit_grid(w, 3, sym, 128, clip)
            from lowbit.formats import quantize_codes
            deq = dequantize(quantize_codes(w, s, z, 3, g_idx), s, z, g_idx)
            errs[clip] = ((deq - w).abs() ** 2.4).reshape(32, 2, 128).sum(-1)
        assert (errs["mse"] <= errs["minmax"] + 1e-5).all()
        assert errs["mse"].sum() < 0.95 * errs["minmax"].sum()


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), sym=st.booleans(), group=st.sampled_from([-1, 0, 8, 16, 24]),
       rows=st.integers(1, 5), cols=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_round_trip_codes_are_stable(bits, sym, group, rows, cols, seed):
    """Quantizing a dequantized tensor on the same grid gives back the same codes, and the
    error of every weight inside the grid range is at most half a step."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 3
    qt = quantize_rtn(w, bits, sym, group)
    assert int(qt.q.max()) < 2 ** bits
    from lowbit.formats import quantize_codes
    again = quantize_codes(qt.dequantize(), qt.scale, qt.zero, bits, qt.g_idx)
    assert torch.equal(again, qt.q)
    step = qt.scale[:, qt.g_idx] if qt.scale.shape[0] > 1 else qt.scale.expand(rows, -1)[:, qt.g_idx]
    err = (qt.dequantize() - w).abs()
    if sym:  # symmetric grids clip only the single code -2**(b-1), never reached by rounding
        assert (err <= step / 2 + 1e-5 * step).all()
    else:
        assert (err <= step / 2 + 1e-4 * (1 + w.abs())).all()


@pytest.mark.parametrize("group,clip", [(128, "mse"), (-1, "mse"), (96, "minmax"), (0, "mse")])
def test_grids_fitted_by_blocks_of_rows_equal_one_fit(group, clip, monkeypatch):
    """A large matrix's grids are fitted a block of rows at a time (bounded memory for the
    clipping search): scales and zero points equal those of one fit, a partial last block too."""
    from lowbit.formats import int_affine

    W = torch.randn(70, 1000, generator=torch.Generator().manual_seed(0))
    whole = int_affine.fit_grid(W, 4, group != 96, group, clip, "float16")
    monkeypatch.setattr(int_affine, "FIT_CHUNK", 7 * 1000 + 5)  # 7 rows at a time
    parts = int_affine.fit_grid(W, 4, group != 96, group, clip, "float16")
    assert torch.equal(whole[0], parts[0]) and torch.equal(whole[1], parts[1])
