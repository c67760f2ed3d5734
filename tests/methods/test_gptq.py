"""GPTQ against an independent reference: plain column-by-column optimal brain
quantization in numpy float64, with the inverse Hessian downdated by Gaussian
elimination after every column (no Cholesky trick, no blocking)."""
import numpy as np
import pytest
import torch

from lowbit.calibration.hessian import HessianObserver
from lowbit.formats import quantize_rtn
from lowbit.methods.gptq import gptq_quantize


def _grid(x: np.ndarray, bits: int, sym: bool):
    """Per-row minmax grid of x (out, k), zero included in the range."""
    lo = np.minimum(x.min(1), 0)
    hi = np.maximum(x.max(1), 0)
    if sym:
        s = np.maximum(np.abs(lo), hi) / (2 ** (bits - 1) - 1)
        s = np.where(s > 0, s, 1.0)
        z = np.full_like(s, 2 ** (bits - 1))
    else:
        s = (hi - lo) / (2**bits - 1)
        s = np.where(s > 0, s, 1.0)
        z = np.clip(np.round(-lo / s), 0, 2**bits - 1)
    return s, z


def reference_gptq(W, H, bits, sym, group, damp=0.01, order=None):
    W = W.astype(np.float64).copy()
    out, n = W.shape
    H = H.astype(np.float64) + damp * np.mean(np.diag(H)) * np.eye(n)
    order = np.arange(n) if order is None else order
    Hinv = np.linalg.inv(H)
    remaining = list(order)
    codes = np.zeros((out, n), dtype=np.int64)
    s = z = None
    for k, j in enumerate(order):
        if k % (group if group > 0 else n) == 0:
            cols = order[k:k + group] if group > 0 else order
            s, z = _grid(W[:, cols], bits, sym)
        q = np.clip(np.round(W[:, j] / s) + z, 0, 2**bits - 1)
        codes[:, j] = q
        err = (W[:, j] - (q - z) * s) / Hinv[j, j]
        W[:, remaining] -= np.outer(err, Hinv[j, remaining])
        # remove column j from the inverse Hessian of the remaining columns
        Hinv = Hinv - np.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
        remaining.remove(j)
    return codes


def correlated_problem(out=24, n=80, tokens=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    # inputs driven by a few shared factors plus noise, with uneven channel scales: like real activations
    mix = torch.randn(16, n, generator=g) * torch.linspace(0.2, 3, n)
    X = torch.randn(tokens, 16, generator=g) @ mix + 0.3 * torch.randn(tokens, n, generator=g)
    obs = HessianObserver(n)
    obs.add_batch(X[:tokens // 2])
    obs.add_batch(X[tokens // 2:])
    W = torch.randn(out, n, generator=g) * 0.1
    return W, obs.H, X


def test_hessian_running_mean_equals_batch_formula():
    W, H, X = correlated_problem()
    torch.testing.assert_close(H, 2 * X.T @ X / X.shape[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width", [80, 300, 1100])
def test_hessian_blocks_against_float64_reference(width):
    """The upper-block-triangle accumulation (blocks of 128 at 300 wide, 275 at 1100, a
    ragged last block) over uneven batches equals 2 X^T X / n computed in float64, and is
    exactly symmetric; reading H between batches does not disturb the accumulation."""
    g = torch.Generator().manual_seed(width)
    X = torch.randn(700, width, generator=g) * torch.linspace(0.1, 4, width)
    obs = HessianObserver(width)
    obs.add_batch(X[:100])
    _ = obs.H  # a read in between
    obs.add_batch(X[100:350].reshape(5, 50, width))  # (B, T, C) batches are flattened
    obs.add_batch(X[350:])
    ref = (2 * X.double().T @ X.double() / X.shape[0]).float()
    torch.testing.assert_close(obs.H, ref, rtol=2e-5, atol=2e-4)
    assert torch.equal(obs.H, obs.H.T)


@pytest.mark.parametrize("bits,sym,group", [(4, True, -1), (3, False, -1), (4, True, 16), (2, False, 32)])
@pytest.mark.parametrize("block", [128, 16])
def test_same_codes_as_reference(bits, sym, group, block):
    W, H, _ = correlated_problem()
    ours = gptq_quantize(W.double(), H.double(), bits, sym, group, block_size=block, dtype=torch.float64)
    ref = reference_gptq(W.numpy(), H.numpy(), bits, sym, group)
    np.testing.assert_array_equal(ours.q.numpy().astype(np.int64), ref)


def test_same_codes_as_reference_with_act_order():
    W, H, _ = correlated_problem(seed=3)
    ours = gptq_quantize(W.double(), H.double(), 4, False, 16, act_order=True, dtype=torch.float64)
    order = np.argsort(-np.diag(H.numpy()), kind="stable")
    ref = reference_gptq(W.numpy(), H.numpy(), 4, False, 16, order=order)
    np.testing.assert_array_equal(ours.q.numpy().astype(np.int64), ref)
    assert ours.act_order
    # g_idx follows the processing order: the k-th column processed belongs to group k // 16
    assert np.array_equal(ours.g_idx.numpy()[order], np.arange(80) // 16)
    # each column decodes on its own group's grid, looked up through g_idx
    g = ours.g_idx.long()
    expect = ours.scale[:, g].double() * (ours.q.double() - ours.zero[:, g].double())
    torch.testing.assert_close(ours.dequantize().double(), expect)


def _output_error(W, Wq, H):
    D = (W - Wq).double()
    return float(torch.trace(D @ H.double() @ D.T))


@pytest.mark.parametrize("bits,group", [(4, -1), (3, 16), (4, 32), (2, -1)])
def test_lower_output_error_than_rtn(bits, group):
    W, H, _ = correlated_problem(out=64, n=128, tokens=1000, seed=bits + group)
    gptq = gptq_quantize(W, H, bits, True, group)
    rtn = quantize_rtn(W, bits, True, group)
    e_gptq, e_rtn = _output_error(W, gptq.dequantize(), H), _output_error(W, rtn.dequantize(), H)
    assert e_gptq < 0.5 * e_rtn, (e_gptq, e_rtn)


def test_static_groups_with_act_order_keep_natural_groups():
    W, H, _ = correlated_problem(seed=5)
    qt = gptq_quantize(W, H, 4, True, 16, act_order=True, static_groups=True)
    assert not qt.act_order and torch.equal(qt.g_idx, torch.arange(80) // 16)
    rtn = quantize_rtn(W, 4, True, 16)
    torch.testing.assert_close(qt.scale, rtn.scale)  # grids fixed from the unquantized weights
    assert _output_error(W, qt.dequantize(), H) < _output_error(W, rtn.dequantize(), H)


def test_dead_inputs_and_rank_deficient_hessian():
    W, H, _ = correlated_problem(seed=7)
    H[5, :] = H[:, 5] = 0  # an input that never fired
    H = H @ torch.diag((torch.arange(80) % 3 != 0).float()) @ torch.diag((torch.arange(80) % 3 != 0).float())
    qt = gptq_quantize(W, H, 4, True, 16)
    assert torch.isfinite(qt.dequantize()).all()
    assert (qt.dequantize()[:, 5] == 0).all()


def test_a_large_matrix_is_solved_in_blocks_of_rows_with_the_same_codes(monkeypatch):
    """Output rows share only H, so GPTQ on blocks of rows (bounded memory for a 49k-token head)
    gives the codes of one solve, on integer and on GGML grids."""
    from gguf import GGMLQuantizationType as T

    from lowbit.formats import GGMLGrid, IntAffineGrid
    from lowbit.methods import gptq_solver

    torch.manual_seed(0)
    X = torch.randn(512, 256)
    H = 2 * X.T @ X / X.shape[0]
    W = torch.randn(96, 256) * 0.05
    for grid, fit in ((IntAffineGrid(4, 64, True, "mse"), "static"), (GGMLGrid(T.Q4_K), "block")):
        whole = gptq_solver.gptq_by_rows(W, H, grid, act_order=True, fit=fit)
        monkeypatch.setattr(gptq_solver, "ROW_CHUNK", 32 * 256)  # blocks of 32 rows
        parts = gptq_solver.gptq_by_rows(W, H, grid, act_order=True, fit=fit)
        monkeypatch.undo()
        assert torch.equal(parts.dequantize(), whole.dequantize())
        if hasattr(whole, "blocks"):
            assert (parts.blocks == whole.blocks).all()
        else:
            assert torch.equal(parts.q, whole.q)


def test_wide_inputs_get_a_float32_factor_as_good_as_float64(monkeypatch):
    """Inputs wider than FLOAT64_FACTOR_MAX are factored in float32 (half the memory): the
    factor is U with U^T U = (H + damp I)^-1 (checked in float64), and GPTQ's output error on
    it is that of the float64 factor within 0.1%."""
    from lowbit.methods import gptq_solver

    n = 384
    torch.manual_seed(3)
    X = torch.randn(300, n) * (torch.rand(n) ** 3 + 0.05)  # fewer tokens than inputs: H singular
    H = 2 * X.T @ X / X.shape[0]
    W = torch.randn(64, n) / n ** 0.5
    f64 = gptq_solver.hessian_factor(H, 0.01, act_order=True)
    monkeypatch.setattr(gptq_solver, "FLOAT64_FACTOR_MAX", n - 1)
    f32 = gptq_solver.hessian_factor(H, 0.01, act_order=True)
    Hp = H.double()[f32.perm][:, f32.perm]
    damped = Hp + 0.01 * Hp.diagonal().mean() * torch.eye(n, dtype=torch.float64)
    U = f32.U.double()
    assert torch.allclose(U.T @ U @ damped, torch.eye(n, dtype=torch.float64), atol=2e-3)
    assert torch.equal(torch.triu(f32.U), f32.U)
    loss = [_output_error(W, gptq_quantize(W, H, 4, True, 64, act_order=True, static_groups=True, factor=f).dequantize(), H)
            for f in (f64, f32)]
    assert abs(loss[1] - loss[0]) <= 1e-3 * loss[0], loss


def _check_factor(f, H, damp):
    """U^T U = (P^T H P + damp * mean diag I)^-1, checked in float64, U upper triangular."""
    n = H.shape[0]
    perm = f.perm if f.perm is not None else torch.arange(n)
    Hp = H.double()[perm][:, perm]
    Hp[f.dead[perm], f.dead[perm]] = 1
    damped = Hp + damp * Hp.diagonal().mean() * torch.eye(n, dtype=torch.float64)
    U = f.U.double()
    assert torch.equal(torch.triu(f.U), f.U)
    return (U.T @ U @ damped - torch.eye(n, dtype=torch.float64)).abs().max().item()


@pytest.mark.parametrize("n", [1, 7, 256, 257, 600])
def test_hessian_factor_in_place_is_the_inverse_cholesky(n, monkeypatch):
    """The factor is computed over one matrix (permutation by cycles, in-place Cholesky, blocked
    triangular inverse, in-place reversal): against float64 algebra, for widths around the
    256-column blocks, float64 and float32 factors, a handed-over H and a shared one (equal)."""
    from lowbit.methods import gptq_solver

    torch.manual_seed(n)
    X = torch.randn(2 * n + 8, n) * (torch.rand(n) + 0.1)
    X[:, n // 2] = 0  # a dead input
    H = 2 * X.T @ X / X.shape[0]
    for f64max in (4096, 0):
        monkeypatch.setattr(gptq_solver, "FLOAT64_FACTOR_MAX", f64max)
        for act_order in (False, True):
            shared = gptq_solver.hessian_factor(H, 0.01, act_order)
            owned_H = H.clone()
            owned = gptq_solver.hessian_factor(owned_H, 0.01, act_order, own=True)
            assert torch.allclose(shared.U, owned.U, rtol=1e-5, atol=1e-6 * shared.U.abs().max().item())
            assert _check_factor(owned, H, 0.01) < (1e-6 if f64max else 1e-4)  # U is held in float32
    assert torch.equal(H, 2 * X.T @ X / X.shape[0])  # a shared H is left as it was


def test_hessian_factor_retries_with_more_dampening_from_a_file_backup(monkeypatch, caplog):
    """An indefinite H: 1% dampening fails (in float32, then float64), 10% succeeds; the
    in-place Cholesky overwrote the matrix, so the retry reads the copy kept in a file."""
    from lowbit.methods import gptq_solver

    monkeypatch.setattr(gptq_solver, "IN_MEMORY_BACKUP", 0)
    n = 64
    torch.manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    lam = torch.ones(n, dtype=torch.float64)
    lam[0] = -0.03  # mean diag ~ 0.98: -0.03 + 0.0098 < 0, -0.03 + 0.098 > 0
    H = (Q * lam) @ Q.T
    H = ((H + H.T) / 2).float()
    with caplog.at_level("WARNING"):
        f = gptq_solver.hessian_factor(H, 0.01, act_order=True)
    assert "needed dampening 0.1" in caplog.text
    assert _check_factor(f, H, 0.1) < 1e-4
