"""The Hessian of a Linear's layer-wise squared error: H = 2 X^T X / n over calibration
tokens, accumulated as a running mean so batches of any size can be added."""
from __future__ import annotations

import torch

from lowbit.calibration.observer import Observer


class HessianObserver(Observer):
    def __init__(self, in_features: int, device="cpu"):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)  # (in, in)
        self.n = 0

    @torch.no_grad()
    def add_batch(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # (N, in)
        n_new = x.shape[0]
        self.H.mul_(self.n / (self.n + n_new))
        self.n += n_new
        x = x * (2 / self.n) ** 0.5
        self.H.addmm_(x.T, x)
