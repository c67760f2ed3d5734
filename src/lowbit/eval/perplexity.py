"""Perplexity with the GPTQ protocol, and KL divergence against a base model.

The text is tokenized as one stream and cut into non-overlapping windows of `seqlen`
tokens; perplexity is exp of the mean next-token NLL over all predicted tokens. When a
base model is given, both models see the same windows and we also report the mean
token KL(P_base || P_quant) and how often their top-1 tokens agree."""
from __future__ import annotations

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


@torch.no_grad()
def _logits(model, batch):
    return model(input_ids=batch, use_cache=False).logits[:, :-1].float()  # (B, T-1, V)


@torch.no_grad()
def evaluate_many(models: dict, wins: torch.Tensor, base=None, batch_size: int = 2,
                  progress: Callable[[str, int, int], None] | None = None) -> dict[str, dict]:
    """Metrics for several models on the same windows; the base runs once per batch."""
    acc = {k: {"nll": 0.0, "kld": 0.0, "agree": 0} for k in models}
    base_nll, count = 0.0, 0
    for i in range(0, len(wins), batch_size):
        batch = wins[i:i + batch_size]
        target = batch[:, 1:, None]
        count += target.numel()
        base_logp = F.log_softmax(_logits(base, batch), -1) if base is not None else None
        if base_logp is not None:
            base_nll += float(-base_logp.gather(-1, target).sum())
            base_p, base_top = base_logp.exp(), base_logp.argmax(-1)
        for name, model in models.items():
            logp = F.log_softmax(_logits(model, batch), -1)
            a = acc[name]
            a["nll"] += float(-logp.gather(-1, target).sum())
            if base_logp is not None:
                a["kld"] += float((base_p * (base_logp - logp)).sum())
                a["agree"] += int((base_top == logp.argmax(-1)).sum())
            del logp
        if progress:
            progress("eval", min(i + batch_size, len(wins)), len(wins))
    results = {}
    for name, a in acc.items():
        r = {"perplexity": math.exp(a["nll"] / count), "nll": a["nll"] / count, "tokens": count,
             "windows": len(wins), "seqlen": wins.shape[1]}
        if base is not None:
            r.update(base_perplexity=math.exp(base_nll / count), kld=a["kld"] / count,
                     top1_agreement=a["agree"] / count)
        results[name] = r
    return results


def evaluate_windows(model, wins: torch.Tensor, base=None, batch_size: int = 2,
                     progress: Callable[[str, int, int], None] | None = None) -> dict:
    return evaluate_many({"model": model}, wins, base, batch_size, progress)["model"]
