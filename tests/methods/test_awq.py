"""AWQ: the clipping search's output error equals a direct computation over the calibration
inputs; the search never does worse than min-max (AWQ's scales fold exactly: tests/pipeline/
test_smooth.py); on correlated data with salient channels the
scaled error is below the unscaled; the whole method runs end to end and writes a checkpoint
that loads back to the same logits."""
import pytest
import torch

from lowbit.calibration.hessian import HessianObserver
from lowbit.formats import quantize_rtn
from lowbit.methods.awq import clip_search, group_hessians, output_error
from lowbit.transforms.smooth import AWQ_ALPHAS, awq_scales
from tests.tiny import tiny_llm


def _data(out=96, inp=192, n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g)
    mix = torch.randn(inp, inp, generator=g) / inp**0.5 + torch.eye(inp)
    X = torch.randn(n, inp, generator=g) @ mix  # correlated inputs
    X[:, [5, 50, 120]] *= 20  # salient channels
    return W, X


def _H(X):
    obs = HessianObserver(X.shape[1])
    obs.add_batch(X)
    return obs.H


def test_output_error_is_the_error_over_the_inputs():
    W, X = _data()
    E = W - quantize_rtn(W, 3, False, 64).dequantize()
    direct = ((X[:, :, None] * E.T[None]).reshape(len(X), 3, 64, -1).sum(2) ** 2).sum(0).T  # (out, groups)
    got = output_error(E.reshape(96, 3, 64), group_hessians(_H(X), 64))
    torch.testing.assert_close(got * len(X) / 2, direct, rtol=1e-3, atol=1e-2)  # H = 2 X^T X / n


@pytest.mark.parametrize("bits,group,sym", [(4, 64, False), (3, 64, True), (4, -1, False), (4, 40, False)])
def test_clip_search_never_loses_to_min_max(bits, group, sym):
    W, X = _data()
    H = _H(X)
    s, z = clip_search(W, H, bits, sym, group)
    g_idx = torch.arange(W.shape[1]) // (group if group > 0 else W.shape[1])
    Wq = (torch.clamp(torch.round(W / s[:, g_idx]) + z[:, g_idx], 0, 2**bits - 1) - z[:, g_idx]) * s[:, g_idx]
    plain = quantize_rtn(W, bits, sym, group).dequantize()
    err = lambda V: float(((X @ (W - V).T) ** 2).sum())  # noqa: E731
    assert err(Wq) <= err(plain) * (1 + 1e-5)
    assert err(Wq) < 0.97 * err(plain)  # and it finds something on data with salient inputs


def test_awq_scales_lower_the_rounded_error_on_salient_channels():
    W, X = _data(seed=1)
    absmean = X.abs().mean(0)

    def err(alpha):
        s = awq_scales(absmean, alpha)
        Wq = quantize_rtn(W * s, 4, True, 64).dequantize() / s
        return float(((X @ (W - Wq).T) ** 2).sum())
    unscaled = err(0.0)
    assert err(0.0) == pytest.approx(float(((X @ (W - quantize_rtn(W, 4, True, 64).dequantize()).T) ** 2).sum()),
                                     rel=1e-4)  # alpha 0 is no scaling
    assert min(err(a) for a in AWQ_ALPHAS) < 0.8 * unscaled
    assert len(AWQ_ALPHAS) == 20


def test_awq_end_to_end_beats_rtn_and_writes_what_it_computed(tmp_path, tiny_tok):
    import lowbit
    from clitools import PROSE
    from lowbit.io.load import Loaded, load_model
    from lowbit.spec import QuantSpec
    from tests.pipeline.test_smooth import salient_channels

    text = tmp_path / "prose.txt"
    text.write_text(PROSE)
    ids = torch.tensor([tiny_tok(PROSE)["input_ids"][:96]])
    src = tmp_path / "src"
    salient_channels(tiny_llm("llama", vocab=len(tiny_tok), seed=0), factor=50).save_pretrained(src)
    tiny_tok.save_pretrained(src)
    with torch.no_grad():
        flt = load_model(str(src)).model(ids).logits
    err = {}
    for method in ("rtn", "awq"):
        spec = QuantSpec(method=method, bits=4, group_size=64, symmetric=False)
        s = lowbit.quantize(Loaded(load_model(str(src)).model, tiny_tok, str(src), "hf"), spec, calib=text,
                            nsamples=8, seqlen=64)
        assert bool(s["smoothing"]) == (method == "awq")
        with torch.no_grad():
            err[method] = float((s["loaded"].model(ids).logits - flt).abs().mean())
    assert err["awq"] < 0.75 * err["rtn"], err
    for fmt in ("compressed-tensors", "awq"):
        out = tmp_path / fmt
        spec = QuantSpec(method="awq", bits=4, group_size=64, symmetric=False)
        s = lowbit.quantize(str(src), spec, out, calib=text, nsamples=8, seqlen=64, format=fmt)
        ref = lowbit.quantize(Loaded(load_model(str(src)).model, tiny_tok, str(src), "hf"), spec, calib=text,
                              nsamples=8, seqlen=64, format=fmt)
        with torch.no_grad():
            back = load_model(str(out)).model(ids).logits
            torch.testing.assert_close(back, ref["loaded"].model(ids).logits, rtol=2e-3, atol=2e-3)
