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
def evaluate_windows(model, wins: torch.Tensor, base=None, batch_size: int = 2,
                     progress: Callable[[str, int, int], None] | None = None) -> dict:
    nll = base_nll = kld = 0.0
    agree = count = 0
    for i in range(0, len(wins), batch_size):
        batch = wins[i:i + batch_size]
        target = batch[:, 1:]
        logp = F.log_softmax(_logits(model, batch), -1)
        nll += float(-logp.gather(-1, target[..., None]).sum())
        count += target.numel()
        if base is not None:
            base_logp = F.log_softmax(_logits(base, batch), -1)
            base_nll += float(-base_logp.gather(-1, target[..., None]).sum())
            kld += float((base_logp.exp() * (base_logp - logp)).sum())
            agree += int((base_logp.argmax(-1) == logp.argmax(-1)).sum())
            del base_logp
        del logp
        if progress:
            progress("eval", min(i + batch_size, len(wins)), len(wins))
    out = {"perplexity": math.exp(nll / count), "tokens": count, "windows": len(wins),
           "seqlen": wins.shape[1], "nll": nll / count}
    if base is not None:
        out.update(base_perplexity=math.exp(base_nll / count), kld=kld / count,
                   top1_agreement=agree / count)
    return out
