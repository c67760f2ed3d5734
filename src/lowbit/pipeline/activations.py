"""Calibration activations between decoder layers, kept in memory up to a budget and
written to disk beyond it.

The walk holds two sets at a time (a layer's inputs and its outputs). For 128 x 512 tokens
a set is 1 GB at hidden size 4096 and 2 GB at 8192, so on a small machine the batches past
the budget go to one safetensors file each and are read back when the walk iterates over
them: peak memory is then the budget plus one batch, whatever the calibration size.
"""
from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

_ids = itertools.count()


def default_budget_bytes() -> int:
    """A quarter of the memory available now, for each of the two sets."""
    try:
        import psutil
        return int(psutil.virtual_memory().available // 4)
    except ImportError:  # psutil comes with accelerate; without it, keep everything in memory
        return 1 << 62


class Activations:
    """A list of batches (hidden, args, kwargs); hidden states past `budget_bytes` live in
    files under spill_dir. Iterating yields every batch with its hidden state in memory."""

    def __init__(self, budget_bytes: int | None = None, spill_dir: Path | None = None):
        self.budget = default_budget_bytes() if budget_bytes is None else budget_bytes
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.items: list[tuple[torch.Tensor | Path, tuple, dict]] = []
        self.in_memory_bytes = 0
        self._id = next(_ids)

    def new(self) -> "Activations":
        """An empty set with the same budget and spill directory (for a layer's outputs)."""
        return Activations(self.budget, self.spill_dir)

    def append(self, batch: tuple) -> None:
        h, args, kwargs = batch
        nbytes = h.numel() * h.element_size()
        if self.in_memory_bytes + nbytes <= self.budget:
            self.items.append((h, args, kwargs))
            self.in_memory_bytes += nbytes
            return
        if self.spill_dir is None:
            self.spill_dir = Path(tempfile.mkdtemp(prefix="lowbit-acts-"))
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"set{os.getpid()}-{self._id:05d}-b{len(self.items):05d}.safetensors"
        from lowbit.io.file_checks import disk_full_errors
        with disk_full_errors(self.spill_dir):
            save_file({"h": h.contiguous()}, str(path))
        self.items.append((path, args, kwargs))

    def extend(self, batches) -> "Activations":
        for b in batches:
            self.append(b)
        return self

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        for h, args, kwargs in self.items:
            yield (_read(h) if isinstance(h, Path) else h), args, kwargs

    def hidden(self):
        """Each batch's hidden state: a tensor, or the Path of the file holding it."""
        return [h for h, _, _ in self.items]

    @property
    def spilled(self) -> int:
        return sum(isinstance(h, Path) for h, _, _ in self.items)

    def discard(self) -> None:
        """Delete this set's files (the walk is past it)."""
        for h, _, _ in self.items:
            if isinstance(h, Path):
                h.unlink(missing_ok=True)
        self.items = []
        self.in_memory_bytes = 0
        if self.spill_dir is not None:
            try:
                self.spill_dir.rmdir()  # only if no other set still has files there
            except OSError:
                pass


def _read(path: Path) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as fh:
        return fh.get_tensor("h")
