"""Perplexity and KL divergence against independent computations."""
import math

import pytest
import torch

from lowbit.eval.perplexity import evaluate_many, evaluate_windows, windows
from tiny import tiny_model


def test_windows_are_non_overlapping_and_capped():
    ids = torch.arange(1000)
    w = windows(ids, 128, None)
    assert w.shape == (7, 128) and torch.equal(w.reshape(-1), ids[:896])
    assert windows(ids, 128, 3).shape == (3, 128)


def test_perplexity_matches_transformers_loss():
    model = tiny_model("llama")
    wins = torch.randint(0, 512, (3, 50), generator=torch.Generator().manual_seed(0))
    res = evaluate_windows(model, wins, batch_size=2)
    with torch.no_grad():  # transformers' own shifted cross-entropy, one window at a time
        losses = [float(model(w[None], labels=w[None]).loss) for w in wins]
    assert res["perplexity"] == pytest.approx(math.exp(sum(losses) / 3), rel=1e-5)
    assert res["tokens"] == 3 * 49


def test_kld_zero_for_the_same_model_and_matches_direct_formula():
    base = tiny_model("llama", seed=0)
    other = tiny_model("llama", seed=1)
    wins = torch.randint(0, 512, (2, 30), generator=torch.Generator().manual_seed(0))
    res = evaluate_many({"same": base, "other": other}, wins, base=base)
    assert res["same"]["kld"] == pytest.approx(0, abs=1e-6)
    assert res["same"]["top1_agreement"] == 1.0
    assert res["same"]["perplexity"] == pytest.approx(res["same"]["base_perplexity"])
    with torch.no_grad():
        p = torch.log_softmax(base(wins).logits[:, :-1].double(), -1)
        q = torch.log_softmax(other(wins).logits[:, :-1].double(), -1)
    kld = float(torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum")) / (2 * 29)
    assert res["other"]["kld"] == pytest.approx(kld, rel=1e-4)
    assert 0 <= res["other"]["top1_agreement"] < 1
