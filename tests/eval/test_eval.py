"""Perplexity and KL divergence against independent computations."""
import math
from pathlib import Path

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


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "opt"])
def test_head_on_decoder_states_equals_the_full_forward(family):
    """The evaluation computes logits as the head on the decoder's output (so a base's states
    can be cached, and the head kept in float32 under bf16 forwards): bit for bit the model's own."""
    from lowbit.eval.perplexity import head_inputs, head_logits
    model = tiny_model(family)
    batch = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        full = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
    assert torch.equal(head_logits(model, head_inputs(model, batch)), full)


def test_kld_standard_error_over_windows():
    """Hand check: the standard error is the spread of the per-window mean KLDs / sqrt(windows)."""
    base, other = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    wins = windows(torch.randint(0, 512, (6 * 16,)), 16, None)
    res = evaluate_windows(other, wins, base, batch_size=2)
    per = []
    for w in wins:
        with torch.no_grad():
            p = torch.log_softmax(base(w[None]).logits[0, :-1].double(), -1)
            q = torch.log_softmax(other(w[None]).logits[0, :-1].double(), -1)
        per.append(float((p.exp() * (p - q)).sum(-1).mean()))
    per = torch.tensor(per, dtype=torch.float64)
    assert res["kld"] == pytest.approx(float(per.mean()), rel=1e-4)
    assert res["kld_stderr"] == pytest.approx(float(per.std() / math.sqrt(len(per))), rel=1e-3)


def test_base_hidden_states_cached_give_identical_results(tmp_path, monkeypatch, default_tokenizer):
    """The second evaluation reads the base's states from the cache instead of running it, and
    reports the very same numbers; another text is another cache entry."""
    import lowbit
    from tiny import VOCAB
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "base"
    tiny_model("llama", vocab=VOCAB).save_pretrained(src)
    default_tokenizer.save_pretrained(src)
    out = tmp_path / "q"
    lowbit.quantize(str(src), "w4g32", out)
    text = Path(__file__).parents[1] / "data" / "prose.txt"
    first = lowbit.evaluate(str(out), data=text, seqlen=64, max_windows=5)
    entries = list((tmp_path / "cache" / "eval-base").glob("*.safetensors"))
    second = lowbit.evaluate(str(out), data=text, seqlen=64, max_windows=5)
    assert not first["base_cached"] and second["base_cached"] and len(entries) == 1
    for key in ("perplexity", "base_perplexity", "kld", "top1_agreement", "kld_stderr"):
        assert first[key] == second[key], key
    lowbit.evaluate(str(out), data=text, seqlen=32, max_windows=5)
    assert len(list((tmp_path / "cache" / "eval-base").glob("*.safetensors"))) == 2


def test_parquet_text_installs_with_lowbit(tmp_path):
    """.parquet calibration/evaluation text is advertised: pyarrow comes with the install."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lowbit.calibration.text import read_text_file
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["first paragraph", "second paragraph"]}), f)
    assert read_text_file(f) == "first paragraph\n\nsecond paragraph"
