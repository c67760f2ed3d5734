"""How the runtime treats a Linear's input, by scheme name (recorded on the quantized tensor, `act`):

  fp8-token   each token's (row's) values scaled by amax / 448 into float8 e4m3, rounded by
              torch's cast, and back: what an FP8 GEMM with per-token activation scales
              computes (vLLM's FP8-dynamic checkpoints; compressed-tensors' strategy "token")
  int8-token  W8A8: each token rounded to int8 (amax / 127), multiplied by the int8 weight codes
              with a real int8 GEMM (runtime/int8_linear.py)
  llm-int8    LLM.int8(): input columns with a value of |x| >= 6 in float, the rest as int8-token

round_input is the scheme's rounding of an input alone (what the smoothing search compares
against); attach(module, qt) makes the module compute as the runtime does, removably: a
pre-hook for fp8-token, the int8 kernel as its forward for the int8 schemes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lowbit.formats.fp8 import fp8_max, to_fp8
from lowbit.runtime import int8_linear

NONE = "none"


@dataclass(frozen=True)
class ActScheme:
    round_input: Callable[[torch.Tensor], torch.Tensor]
    # (input, signed int8 codes (out, in), scale (out,), bias) -> output, for int8 weight schemes
    kernel: Callable | None = None


def fp8_per_token(x: torch.Tensor) -> torch.Tensor:
    amax = x.detach().abs().amax(dim=-1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / fp8_max("e4m3"), torch.ones_like(amax))
    return (to_fp8(x.float() / scale, "e4m3").float() * scale).to(x.dtype)


ACT_SCHEMES: dict[str, ActScheme] = {
    "fp8-token": ActScheme(fp8_per_token),
    "int8-token": ActScheme(int8_linear.round_rows, int8_linear.w8a8),
    "llm-int8": ActScheme(int8_linear.round_rows_llm_int8, int8_linear.llm_int8),
}


class _Forward:
    """Handle of a replaced forward: remove() gives the module its own forward back."""
    def __init__(self, module):
        self.module = module

    def remove(self):
        self.module.__dict__.pop("forward", None)


def attach(module: torch.nn.Module, qt) -> list:
    """Make `module` compute as the runtime that loads qt does (its act scheme); [] for none."""
    scheme = getattr(qt, "act", NONE)
    if scheme == NONE:
        return []
    act = ACT_SCHEMES[scheme]
    if act.kernel is None:
        return [module.register_forward_pre_hook(lambda m, args: (act.round_input(args[0]),) + tuple(args[1:]))]
    wq, scale = qt.signed_codes(), qt.scale.float().reshape(-1)
    module.forward = lambda x: act.kernel(x, wq, scale, module.bias)
    return [_Forward(module)]
