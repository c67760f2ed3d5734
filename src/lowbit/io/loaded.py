"""What loading gives: a torch model, its tokenizer, where it came from and, for a quantized
directory, its codes; and the finite-weights check every loader applies."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lowbit.errors import LowbitError


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    source: str  # what the user named, resolved to a path where there is one
    kind: str  # "hf", "gguf", "quantized", "hub"
    quantized: dict = field(default_factory=dict)  # name -> QuantizedTensor when kind == quantized
    meta: dict = field(default_factory=dict)  # lowbit.json of a directory lowbit wrote


def check_finite(name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        return
    flat = t.reshape(-1)
    step = 1 << 22  # in slices: a whole-tensor mask of a 0.4 GB embedding is another 0.1 GB
    if not all(bool(torch.isfinite(flat[i:i + step]).all()) for i in range(0, flat.numel(), step)):
        raise LowbitError(f"weight {name} contains NaN or Inf: the checkpoint is damaged, "
                          "re-export or re-download it")
