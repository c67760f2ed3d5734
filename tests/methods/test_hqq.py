"""HQQ: the proximal step against a hand-worked value and a brute-force minimiser, the Lp
objective decreasing from min-max and beating it at equal bits, and codes on a grid the
integer formats can store (integer zero points, scales in the format's dtype)."""
import numpy as np
import pytest
import torch

from lowbit.formats import quantize_rtn
from lowbit.methods.hqq import HQQOptions, hqq_quantize, lp_error, shrink_lp
from lowbit.spec import QuantSpec


def test_shrink_is_the_proximal_step_of_lp():
    # x = 2, beta = 1, p = 0.5: 2 - 2**-0.5 = 1.29289...
    assert float(shrink_lp(torch.tensor([2.0]), 1.0, 0.5)) == pytest.approx(2 - 2**-0.5, rel=1e-6)
    # small inputs go to zero (the threshold), signs are kept
    assert torch.equal(shrink_lp(torch.tensor([0.05, -3.0]), 10.0, 0.7)[:1], torch.tensor([0.0]))
    assert float(shrink_lp(torch.tensor([-3.0]), 10.0, 0.7)) < 0
    # the paper's threshold is a one-step approximation of the proximal map of |e|^p (it uses x
    # for e inside |.|^(p-1) and drops the factor p): it still lowers the split's objective from
    # e = x, and lands within 5% of a brute-force minimiser
    e = np.linspace(-6, 6, 1_200_001)
    for x in (1.5, -2.5, 4.0):
        for beta, p in ((10.0, 0.7), (3.0, 0.8)):
            obj = lambda v: np.abs(v) ** p + beta / 2 * (v - x) ** 2  # noqa: E731
            got = float(shrink_lp(torch.tensor([x], dtype=torch.float64), beta, p))
            assert obj(got) < obj(x)
            assert got == pytest.approx(e[obj(e).argmin()], rel=0.05)


def _correlated(out=256, inp=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g) * (torch.rand(1, inp, generator=g) * 2 + 0.2)
    W[torch.rand(out, inp, generator=g) < 0.003] *= 8  # a few outlier weights, where Lp matters
    return W


@pytest.mark.parametrize("bits,group,sym", [(4, 64, False), (3, 64, False), (2, 32, False), (4, 128, True),
                                            (4, -1, False)])
def test_lp_objective_beats_min_max(bits, group, sym):
    W = _correlated()
    o = HQQOptions()
    mm = quantize_rtn(W, bits, sym, group)
    hq = hqq_quantize(W, bits, sym, group, o)
    err = lambda q: float(lp_error(W, q.dequantize(), o.lp).sum())  # noqa: E731
    assert err(hq) < 0.97 * err(mm)
    # more iterations never give a worse objective (the best grid seen is kept)
    longer = hqq_quantize(W, bits, sym, group, HQQOptions(iters=40))
    assert err(longer) <= err(hq) * (1 + 1e-6)
    # and it is no mere Lp trick: the squared error falls too
    assert (W - hq.dequantize()).pow(2).sum() < (W - mm.dequantize()).pow(2).sum()


def test_grid_is_what_integer_formats_store():
    W = _correlated(64, 192)
    q = hqq_quantize(W, 4, False, 64, scale_dtype="float16")
    assert torch.equal(q.zero, q.zero.round()) and q.zero.min() >= 0 and q.zero.max() <= 15
    assert torch.equal(q.scale, q.scale.half().float())
    assert q.q.max() <= 15
    # the tensor decodes from its own codes, scale and zero (no hidden float state)
    s = q.scale.repeat_interleave(64, 1)
    z = q.zero.repeat_interleave(64, 1)
    assert torch.allclose(q.dequantize(), (q.q.float() - z) * s)
    sym = hqq_quantize(W, 4, True, 64)
    assert torch.all(sym.zero == 8)


def test_partial_last_group_ignores_padding():
    W = _correlated(32, 100)  # groups of 64: the second holds 36 columns
    q = hqq_quantize(W, 4, False, 64)
    assert q.scale.shape == (32, 2)
    o = HQQOptions()
    assert float(lp_error(W, q.dequantize(), o.lp).sum()) < float(lp_error(W, quantize_rtn(W, 4, False, 64).dequantize(), o.lp).sum())


def test_method_registered_and_refuses_unknown_option():
    from lowbit.formats import grid_for
    from lowbit.methods import get_method
    from lowbit.options import check_method_args
    from lowbit.errors import LowbitError
    m = get_method("hqq")
    assert not m.needs_calibration
    spec = QuantSpec(method="hqq", bits=4, group_size=64, symmetric=False, method_args={"iters": 5})
    check_method_args(spec, m)
    W = _correlated(32, 128)
    q = m.quantize(W, grid_for(spec), spec)
    assert torch.equal(q.dequantize(), hqq_quantize(W, 4, False, 64, HQQOptions(iters=5)).dequantize())
    with pytest.raises(LowbitError, match="did you mean 'iters'"):
        check_method_args(QuantSpec(method="hqq", method_args={"iter": 5}), m)
