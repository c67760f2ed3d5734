"""Int8 kernels against numpy references computed by hand (int64 products, the decomposition
written out), and LLM.int8()'s decomposition against bitsandbytes' own int8 matmul."""
import numpy as np
import pytest
import torch

from lowbit.formats import IntAffineGrid
from lowbit.formats.act_quant import attach
from lowbit.runtime import int8_linear as il


def _x(rows=20, cols=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    x[:, 7] *= 30   # outlier features, as LLMs have them
    x[3, 40] = -9.0
    return x


def test_int_matmul_is_exact():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-127, 128, (33, 1536), dtype=torch.int8, generator=g)
    w = torch.randint(-128, 128, (80, 1536), dtype=torch.int8, generator=g)
    want = a.numpy().astype(np.int64) @ w.numpy().astype(np.int64).T
    assert np.array_equal(il.int_matmul(a, w).numpy(), want)


def test_w8a8_equals_the_per_token_int8_reference():
    x = _x()
    W = torch.randn(48, 96) * 0.1
    qt = IntAffineGrid(8, -1, True).rtn(W)
    wq, ws = qt.signed_codes(), qt.scale.reshape(-1)
    bias = torch.randn(48)
    xn = x.numpy().astype(np.float64)
    amax = np.abs(xn).max(axis=1, keepdims=True)
    xs = amax / 127
    xq = np.clip(np.rint(xn / xs), -127, 127)
    want = (xq @ wq.numpy().astype(np.float64).T) * xs * ws.numpy()[None] + bias.numpy()
    got = il.w8a8(x, wq, ws, bias).numpy()
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_llm_int8_keeps_outlier_columns_in_float():
    x = _x()
    W = torch.randn(48, 96) * 0.1
    qt = IntAffineGrid(8, -1, True).rtn(W)
    wq, ws = qt.signed_codes(), qt.scale.reshape(-1)
    xn = x.numpy().astype(np.float64)
    outl = (np.abs(xn) >= 6.0).any(axis=0)
    assert outl.sum() == 2 and outl[7] and outl[40]
    Wd = wq.numpy().astype(np.float64) * ws.numpy()[:, None]
    inl = np.where(outl, 0.0, xn)
    xs = np.abs(inl).max(axis=1, keepdims=True) / 127
    want = (np.clip(np.rint(inl / xs), -127, 127) * xs) @ Wd.T + xn[:, outl] @ Wd[:, outl].T
    assert np.allclose(il.llm_int8(x, wq, ws, None).numpy(), want, rtol=1e-5, atol=1e-5)
    # and the decomposition's input rounding, alone, is what the kernel computes with
    assert torch.allclose(il.round_rows_llm_int8(x) @ qt.dequantize().T, il.llm_int8(x, wq, ws, None), atol=1e-4)


def test_llm_int8_is_close_to_bitsandbytes_own_matmul():
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes (a test dependency) is not installed")
    x = _x(rows=24, cols=128)
    W = torch.randn(64, 128) * 0.1
    qt = IntAffineGrid(8, -1, True).rtn(W)
    wq, ws = qt.signed_codes(), qt.scale.reshape(-1)
    # bitsandbytes quantizes our decoded weights itself: its codes and scales are ours
    lin = bnb.nn.Linear8bitLt(128, 64, bias=False, has_fp16_weights=False, threshold=6.0)
    lin.weight = bnb.nn.Int8Params(qt.dequantize(), requires_grad=False, has_fp16_weights=False)
    lin = lin.to("cpu").eval()  # in training mode its CPU path multiplies decoded weights in float instead
    assert torch.equal(lin.weight.data, wq)
    assert torch.allclose(lin.weight.SCB, ws * 127, rtol=1e-3, atol=0)  # its CPU path keeps SCB at float16 precision
    x = x.half().float()  # bitsandbytes computes in float16: the same inputs for both
    with torch.no_grad():
        theirs = lin(x.half()).float()
    ours = il.llm_int8(x, wq, ws, None)
    ref = x @ qt.dequantize().T  # weights rounded, inputs exact
    # the same decomposition: bitsandbytes differs from ours by its float16 arithmetic (measured
    # 0.33x of the activation rounding's own effect; a weight-only product would be about 1x)
    print("bnb vs ours", (theirs - ours).abs().mean().item(), "ours vs exact inputs", (ours - ref).abs().mean().item())
    assert (theirs - ours).abs().mean() < 0.5 * (ours - ref).abs().mean()


def test_attach_runs_the_kernel_and_removes_cleanly():
    lin = torch.nn.Linear(96, 48)
    qt = IntAffineGrid(8, -1, True, act="int8-token").rtn(lin.weight.detach())
    x = _x()
    with torch.no_grad():
        lin.weight.copy_(qt.dequantize())
        before = lin(x)
        handles = attach(lin, qt)
        got = lin(x)
        for h in handles:
            h.remove()
        after = lin(x)
    assert torch.allclose(got, il.w8a8(x, qt.signed_codes(), qt.scale.reshape(-1), lin.bias), atol=0)
    assert not torch.allclose(got, before) and torch.equal(after, before)
