"""The base model's hidden states on the evaluation windows, cached on disk.

Every `lowbit eval` of a quantized model runs its base model on the same windows. The base's
decoder output (what its head reads: windows x seqlen x hidden, 28 MB for the default model on
24 x 512 tokens, against 2.4 GB for its logits) is saved once per (base model files, token ids,
batch size, forward dtype, library versions); later evaluations run only the base's head on
it. The evaluation always computes logits as the head on these states (eval/perplexity.py),
so a cached run gives the same numbers, bit for bit, as one that ran the base again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lowbit.eval.perplexity import head_inputs

log = logging.getLogger(__name__)
KEEP_ENTRIES = 8  # newest entries kept; older ones are deleted


def cache_root() -> Path:
    from lowbit.io.default_model import cache_dir
    return cache_dir() / "eval-base"


def _fingerprint(source: str) -> list:
    """What identifies a model on disk: its files' names, sizes and modification times."""
    p = Path(source)
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else []
    return [str(p.resolve())] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def cache_key(source: str, wins: torch.Tensor, batch_size: int, dtype: str) -> str | None:
    """None for a model that is not on disk (a hub id or a model built in memory)."""
    if not Path(source).exists():
        return None
    import transformers
    h = hashlib.sha256()
    h.update(json.dumps([_fingerprint(source), list(wins.shape), batch_size, dtype, torch.__version__,
                         transformers.__version__]).encode())
    h.update(wins.to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:32]


class BaseHidden:
    """base_hidden(first window, batch) for evaluate_many: from the cache, or computed and saved."""

    def __init__(self, model, source: str, wins: torch.Tensor, batch_size: int, dtype: str):
        self.model, self.dtype = model, dtype
        key = cache_key(source, wins, batch_size, dtype)
        self.path = cache_root() / f"{key}.safetensors" if key else None
        self.cached: torch.Tensor | None = None
        self.fresh: list[torch.Tensor] = []
        self.usable = self.path is not None
        if self.path is not None and self.path.is_file():
            try:
                with safe_open(str(self.path), framework="pt") as f:
                    self.cached = f.get_tensor("hidden")
                os.utime(self.path)  # newest use: kept longest
            except Exception:  # a damaged entry is recomputed
                self.cached = None
        self.hit = self.cached is not None

    def __call__(self, first: int, batch: torch.Tensor) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[first:first + len(batch)]
        hidden = head_inputs(self.model, batch, self.dtype)
        if self.usable:
            self.fresh.append(hidden.detach().clone())
        return hidden

    def save(self) -> None:
        """Store what was computed (call after the last batch)."""
        if self.hit or not self.usable or not self.fresh:
            return
        root = self.path.parent
        root.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp-{os.getpid()}")
        try:
            save_file({"hidden": torch.cat(self.fresh).contiguous()}, str(tmp))
            os.replace(tmp, self.path)
        except OSError as e:  # a full or read-only cache costs only the next run's time
            log.info("base hidden states not cached (%s)", e)
            tmp.unlink(missing_ok=True)
            return
        finally:
            self.fresh = []
        entries = sorted(root.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[KEEP_ENTRIES:]:
            old.unlink(missing_ok=True)
