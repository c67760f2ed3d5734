"""Perplexity with the GPTQ protocol, and KL divergence against a base model.

The text is tokenized as one stream and cut into non-overlapping windows of `seqlen`
tokens; perplexity is exp of the mean next-token NLL over all predicted tokens. With a stride
(sliding windows, Hugging Face's protocol for fixed-length models) window k starts at k * stride
and scores only its last `stride` tokens (the first window scores all), so every token after
the first is scored once, with at least seqlen - stride tokens of context. When a
base model is given, both models see the same windows and we also report the mean
token KL(P_base || P_quant), its standard error over windows, and how often their top-1
tokens agree.

Each forward is split at the output head: the decoder ("body") gives the hidden states the
head reads, and the head runs in float32 on them. So the body may run under bf16 autocast
(dtype "bfloat16") while logits keep float32 precision, and a base model's hidden states can
be cached on disk (eval/base_cache.py): the head on cached states gives the same logits, bit
for bit, as the full forward.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None) -> torch.Tensor:
    n = len(ids) // seqlen
    if max_windows:
        n = min(n, max_windows)
    if n == 0:
        from lowbit.errors import LowbitError
        raise LowbitError(f"evaluation text has {len(ids)} tokens, fewer than --seqlen {seqlen}: "
                          "give a longer --data file or a smaller --seqlen")
    return ids[: n * seqlen].reshape(n, seqlen)


def strided_windows(ids: torch.Tensor, seqlen: int, stride: int | None, max_windows: int | None):
    """(windows (n, seqlen), scored (n, seqlen - 1) bool: which predicted tokens count).
    stride None (or seqlen): non-overlapping windows, every prediction scored."""
    if stride is None or stride == seqlen:
        wins = windows(ids, seqlen, max_windows)
        return wins, torch.ones(len(wins), seqlen - 1, dtype=torch.bool)
    if not 0 < stride < seqlen:
        from lowbit.errors import LowbitError
        raise LowbitError(f"--stride {stride} must be between 1 and --seqlen {seqlen}: give a smaller stride")
    n = (len(ids) - seqlen) // stride + 1 if len(ids) >= seqlen else 0
    if max_windows:
        n = min(n, max_windows)
    if n <= 0:
        windows(ids, seqlen, max_windows)  # raises the one-line error for too short a text
    starts = torch.arange(n) * stride
    wins = ids[starts[:, None] + torch.arange(seqlen)[None, :]]
    scored = torch.zeros(n, seqlen - 1, dtype=torch.bool)
    scored[0] = True
    scored[1:, seqlen - 1 - stride:] = True  # tokens the window before did not reach
    return wins, scored


class _Stop(Exception):
    pass


@torch.no_grad()
def head_inputs(model, batch: torch.Tensor, dtype: str = "float32") -> torch.Tensor:
    """The hidden states the output head reads (B, T, C), from the decoder alone."""
    head = model.get_output_embeddings()
    seen = []

    def grab(module, args):
        seen.append(args[0])
        raise _Stop

    handle = head.register_forward_pre_hook(grab)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    try:
        with autocast:
            model(input_ids=batch, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


@torch.no_grad()
def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """float32 logits of the next tokens (B, T-1, V) from the head's inputs."""
    head = model.get_output_embeddings()
    return head(hidden.to(head.weight.dtype))[:, :-1].float()


class _Window:
    """Per-window sums, for the means and their standard errors."""

    def __init__(self, n: int):
        self.nll = torch.zeros(n, dtype=torch.float64)
        self.kld = torch.zeros(n, dtype=torch.float64)
        self.agree = torch.zeros(n, dtype=torch.int64)


def _stderr(per_window: torch.Tensor, tokens_per_window) -> float:
    """Standard error of the per-token mean, over windows (tokens within a window correlate)."""
    means = per_window / tokens_per_window
    if len(means) < 2:
        return float("nan")
    return float(means.std(unbiased=True) / math.sqrt(len(means)))


def _kld_per_window(base_logits, base_logp, base_p, logits, logp, scored) -> torch.Tensor:
    """sum over scored tokens of KL(base || model), per window. In float32 the log-probabilities
    carry errors of ~1e-6 per token, which swamp (and can turn negative) the KLD of nearly equal
    models: windows whose float32 KLD is below PRECISE_BELOW per token are recomputed in float64,
    a window at a time (memory), while the rest keep the fast float32 sum."""
    out = ((base_p * (base_logp - logp)).sum(-1) * scored).sum(1).double()
    tokens = scored.sum(1)
    for b in torch.nonzero(out < PRECISE_BELOW * tokens).flatten().tolist():
        bl, ql = F.log_softmax(base_logits[b].double(), -1), F.log_softmax(logits[b].double(), -1)
        out[b] = ((bl.exp() * (bl - ql)).sum(-1) * scored[b]).sum()
    return out


PRECISE_BELOW = 1e-3  # per-token KLD under which float32's rounding would matter (~1e-6 per token)


@torch.no_grad()
def evaluate_many(models: dict, wins: torch.Tensor, base=None, batch_size: int = 2,
                  progress: Callable[[str, int, int], None] | None = None, dtype: str = "float32",
                  base_hidden: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                  scored: torch.Tensor | None = None) -> dict[str, dict]:
    """Metrics for several models on the same windows; the base runs once per batch.
    base_hidden(first window, batch) -> the base's head inputs, when they are cached.
    scored (n, seqlen - 1) bool: the predicted tokens that count (strided_windows); None: all."""
    n = len(wins)
    if scored is None:
        scored = torch.ones(n, wins.shape[1] - 1, dtype=torch.bool)
    per = scored.sum(1).double()  # scored tokens per window
    acc = {k: _Window(n) for k in models}
    base_acc = _Window(n)
    if progress:
        progress("eval", 0, n)
    for i in range(0, n, batch_size):
        batch = wins[i:i + batch_size]
        rows = slice(i, i + len(batch))
        target = batch[:, 1:, None]
        mask = scored[rows]
        base_logits = None
        if base is not None:
            hidden = base_hidden(i, batch) if base_hidden is not None else head_inputs(base, batch, dtype)
            base_logits = head_logits(base, hidden)
            base_logp = F.log_softmax(base_logits, -1)
            base_acc.nll[rows] = -(base_logp.gather(-1, target)[..., 0] * mask).sum(1).double()
            base_p, base_top = base_logp.exp(), base_logp.argmax(-1)
        for name, model in models.items():
            logits = head_logits(model, head_inputs(model, batch, dtype))
            logp = F.log_softmax(logits, -1)
            a = acc[name]
            a.nll[rows] = -(logp.gather(-1, target)[..., 0] * mask).sum(1).double()
            if base_logits is not None:
                a.kld[rows] = _kld_per_window(base_logits, base_logp, base_p, logits, logp, mask)
                a.agree[rows] = ((base_top == logp.argmax(-1)) & mask).sum(1)
            del logp, logits
        if progress:
            progress("eval", min(i + batch_size, n), n)
    count = int(scored.sum())
    results = {}
    for name, a in acc.items():
        nll = float(a.nll.sum()) / count
        r = {"perplexity": math.exp(nll), "nll": nll, "nll_stderr": _stderr(a.nll, per), "tokens": count,
             "windows": n, "seqlen": wins.shape[1], "eval_dtype": dtype}
        if base is not None:
            kld = float(a.kld.sum()) / count
            r.update(base_perplexity=math.exp(float(base_acc.nll.sum()) / count), kld=kld,
                     kld_stderr=_stderr(a.kld, per), top1_agreement=int(a.agree.sum()) / count)
        results[name] = r
    return results


def evaluate_windows(model, wins: torch.Tensor, base=None, batch_size: int = 2,
                     progress: Callable[[str, int, int], None] | None = None, dtype: str = "float32",
                     base_hidden=None, scored: torch.Tensor | None = None) -> dict:
    return evaluate_many({"model": model}, wins, base, batch_size, progress, dtype, base_hidden,
                         scored)["model"]
