"""Sliding-window perplexity (--stride): equal to Hugging Face's documented protocol for
fixed-length models (labels -100 on the context a window shares with the one before); KLD and
top-1 count the same tokens; a stride equal to the window is the non-overlapping protocol."""
import math

import pytest
import torch
import torch.nn.functional as F

from lowbit.errors import LowbitError
from lowbit.eval.perplexity import evaluate_many, strided_windows, windows
from tiny import tiny_model

SEQLEN, STRIDE = 32, 12


def _hf_sliding_nll(model, ids: torch.Tensor, seqlen: int, stride: int):
    """Transcribed from the protocol of huggingface.co/docs/transformers/perplexity: windows begin
    every `stride` tokens, the tokens the previous window scored get label -100; the summed loss
    over the scored labels and their count."""
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + seqlen, len(ids))
        trg_len = end - prev_end
        x = ids[begin:end][None]
        labels = x.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            logits = model(x).logits.double()
        shift = labels[:, 1:]
        losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), shift.reshape(-1),
                                 ignore_index=-100, reduction="sum")
        total += float(losses)
        count += int((shift != -100).sum())
        prev_end = end
        if end == len(ids):
            break
    return total, count


def test_sliding_perplexity_equals_the_transformers_protocol():
    model = tiny_model("llama")
    n = SEQLEN + 6 * STRIDE  # windows end exactly at the text's end
    ids = torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(0))
    wins, scored = strided_windows(ids, SEQLEN, STRIDE, None)
    assert wins.shape == (7, SEQLEN) and torch.equal(wins[1], ids[STRIDE:STRIDE + SEQLEN])
    got = evaluate_many({"m": model}, wins, scored=scored)["m"]
    total, count = _hf_sliding_nll(model, ids, SEQLEN, STRIDE)
    assert got["tokens"] == count == n - 1  # every token after the first, once
    assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_sliding_kld_and_top1_count_the_scored_tokens_only():
    base, other = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    ids = torch.randint(0, 512, (SEQLEN + 3 * STRIDE,), generator=torch.Generator().manual_seed(1))
    wins, scored = strided_windows(ids, SEQLEN, STRIDE, None)
    got = evaluate_many({"m": other}, wins, base, scored=scored)["m"]
    kl = agree = 0.0
    with torch.no_grad():
        for w, keep in zip(wins, scored):
            p = F.log_softmax(base(w[None]).logits[0, :-1].double(), -1)
            q = F.log_softmax(other(w[None]).logits[0, :-1].double(), -1)
            kl += float((p.exp() * (p - q)).sum(-1)[keep].sum())
            agree += float((p.argmax(-1) == q.argmax(-1))[keep].sum())
    count = int(scored.sum())
    assert got["kld"] == pytest.approx(kl / count, rel=1e-4)
    assert got["top1_agreement"] == pytest.approx(agree / count)


def test_stride_equal_to_the_window_is_the_plain_protocol():
    model = tiny_model("llama")
    ids = torch.randint(0, 512, (5 * SEQLEN + 7,), generator=torch.Generator().manual_seed(2))
    wins, scored = strided_windows(ids, SEQLEN, SEQLEN, None)
    assert torch.equal(wins, windows(ids, SEQLEN, None)) and bool(scored.all())
    a = evaluate_many({"m": model}, wins, scored=scored)["m"]
    b = evaluate_many({"m": model}, windows(ids, SEQLEN, None))["m"]
    assert a == b
    capped, _ = strided_windows(ids, SEQLEN, 8, 3)
    assert capped.shape == (3, SEQLEN)


def test_bad_stride_is_one_line():
    ids = torch.arange(100)
    with pytest.raises(LowbitError, match=r"--stride 0 must be between 1 and --seqlen 32: give a smaller stride"):
        strided_windows(ids, SEQLEN, 0, None)
    with pytest.raises(LowbitError, match="--stride 40 must be between 1 and --seqlen 32"):
        strided_windows(ids, SEQLEN, 40, None)


def test_kld_refuses_models_that_do_not_share_a_tokenizer(tmp_path, tiny_tok, default_tokenizer, text_file):
    import lowbit

    a, b = tmp_path / "a", tmp_path / "b"
    tiny_model("llama", vocab=len(tiny_tok)).save_pretrained(a)
    tiny_tok.save_pretrained(a)
    tiny_model("llama", vocab=len(default_tokenizer)).save_pretrained(b)
    default_tokenizer.save_pretrained(b)
    with pytest.raises(LowbitError, match=r"have vocabularies of 512 and 49152: KLD needs two models that share a "
                                          r"tokenizer; give --base such a model, or --base none"):
        lowbit.evaluate(str(a), base=str(b), data=text_file, seqlen=32, max_windows=2)
    res = lowbit.evaluate(str(a), base=str(a), data=text_file, seqlen=32, max_windows=2, stride=16)
    assert res["kld"] == pytest.approx(0.0, abs=1e-9) and res["stride"] == 16
