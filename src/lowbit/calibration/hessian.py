"""The Hessian of a Linear's layer-wise squared error: H = 2 X^T X / n over calibration
tokens, accumulated as a running mean so batches of any size can be added.

X^T X is symmetric, so only its upper block triangle is computed: column blocks of about
a quarter of the width, each multiplied with the columns from its own onwards. On this
CPU that is 0.65x the single-thread time of the full product at 1536 inputs (85 vs 130 ms
for 4096 tokens) and 0.72x at 576; the Hessian is about 40% of a GPTQ run. H is made
whole (mirrored in place) when it is read."""
from __future__ import annotations

import torch

from lowbit.calibration.observer import Observer


def _block(n: int) -> int:
    return min(1024, max(128, -(-n // 4)))


class HessianObserver(Observer):
    def __init__(self, in_features: int, device="cpu"):
        self._upper = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self._mirrored = True
        self.n = 0

    @torch.no_grad()
    def add_batch(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # (N, in)
        n_old = self.n
        self.n += x.shape[0]
        beta, alpha = n_old / self.n, 2 / self.n
        width = x.shape[1]
        b = _block(width)
        for i in range(0, width, b):  # H <- H * n_old / n + (2 / n) x^T x, upper block triangle
            self._upper[i:i + b, i:].addmm_(x[:, i:i + b].T, x[:, i:], beta=beta, alpha=alpha)
        self._mirrored = False

    @property
    def H(self) -> torch.Tensor:
        """(in, in) float32, exactly symmetric (the lower triangle copied from the upper one)."""
        if not self._mirrored:
            H = self._upper
            b = _block(H.shape[0])
            for i in range(0, H.shape[0], b):
                D = H[i:i + b, i:i + b]
                D.copy_(D.triu() + D.triu(1).T)
                H[i + b:, i:i + b].copy_(H[i:i + b, i + b:].T)
            self._mirrored = True
        return self._upper

    def take_H(self) -> torch.Tensor:
        """H, handed over: the observer lets go of it (its last user frees it once factored)."""
        H = self.H
        self._upper = None
        return H

    def state(self) -> dict[str, torch.Tensor]:
        """What a resumed run needs to continue (pipeline/layer_store.py extras)."""
        return {"H": self.H, "n": torch.tensor([self.n], dtype=torch.int64)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self._upper, self._mirrored, self.n = state["H"].float().clone(), True, int(state["n"][0])
