"""Observers: statistics of one Linear's inputs, fed by a forward pre-hook in the layer walk."""
from __future__ import annotations

import torch


class Observer:
    def add_batch(self, x: torch.Tensor) -> None:  # x (..., in)
        raise NotImplementedError
