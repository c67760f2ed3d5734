"""Error metrics between a reference tensor and its reconstruction."""
from __future__ import annotations

import math

import torch


def mse(ref: torch.Tensor, approx: torch.Tensor) -> float:
    return float(((ref.double() - approx.double()) ** 2).mean())


def max_abs_error(ref: torch.Tensor, approx: torch.Tensor) -> float:
    return float((ref.double() - approx.double()).abs().max())


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(|ref|^2 / |ref - approx|^2)."""
    signal = float((ref.double() ** 2).sum())
    noise = float(((ref.double() - approx.double()) ** 2).sum())
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def error_metrics(ref: torch.Tensor, approx: torch.Tensor) -> dict[str, float]:
    return {"mse": mse(ref, approx), "max_abs": max_abs_error(ref, approx),
            "sqnr_db": sqnr_db(ref, approx)}
