"""Replay the outputs of already-quantized Linears in later passes over the same batches.

Inside one decoder layer the walk makes several passes (one per true-sequential group,
then one to produce the next layer's inputs). A Linear quantized in an earlier group gets
the same inputs and has the same weights in every later pass, so its output is computed
once, kept, and replayed. The same holds for a container (self_attn) once every Linear
inside it is quantized: replaying it skips the attention itself in later passes.
Outputs are kept while they fit in `budget_bytes`; beyond it modules simply compute."""
from __future__ import annotations

import types

import torch


class OutputCache:
    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.used = 0
        self.batch = 0  # index of the batch being run, set by the walk
        self.outputs: dict[str, dict[int, torch.Tensor]] = {}
        self.wrapped: dict[str, torch.nn.Module] = {}
        self.full: set[str] = set()  # modules that stopped recording (budget reached)

    def add(self, name: str, module: torch.nn.Module) -> None:
        """Start caching `module` (its weights and inputs must not change any more)."""
        if name in self.wrapped:
            return
        cache = self
        store = self.outputs.setdefault(name, {})
        original = module.forward

        def forward(self_, *args, **kwargs):
            out = store.get(cache.batch)
            if out is not None:
                return out
            out = original(*args, **kwargs)
            size = _nbytes(out)
            if name not in cache.full and cache.used + size <= cache.budget:
                store[cache.batch] = out
                cache.used += size
            else:
                cache.full.add(name)
            return out

        module.forward = types.MethodType(forward, module)
        self.wrapped[name] = module

    def clear(self) -> None:
        for module in self.wrapped.values():
            del module.forward  # back to the class's forward
        self.wrapped.clear()
        self.outputs.clear()
        self.used = 0


def _nbytes(out) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)):
        return sum(_nbytes(o) for o in out)
    return 0
