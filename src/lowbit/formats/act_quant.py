"""Dynamic quantization of a Linear's input, as the runtime applies it at every forward pass.

  fp8-token   each token's (row's) values scaled by amax / 448 into float8 e4m3, rounded by
              torch's cast, and back: what an FP8 GEMM with per-token activation scales
              computes (vLLM's FP8-dynamic checkpoints; compressed-tensors' strategy "token")

attach(model, names, scheme) hooks the named Linears so that evaluation runs the quantized
activations; the hooks are removable (the returned handles)."""
from __future__ import annotations

from typing import Callable

import torch

from lowbit.formats.fp8 import fp8_max, to_fp8

ACT_SCHEMES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
NONE = "none"


def register_act(name: str):
    def deco(fn):
        ACT_SCHEMES[name] = fn
        return fn
    return deco


@register_act("fp8-token")
def fp8_per_token(x: torch.Tensor) -> torch.Tensor:
    amax = x.detach().abs().amax(dim=-1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / fp8_max("e4m3"), torch.ones_like(amax))
    return (to_fp8(x.float() / scale, "e4m3").float() * scale).to(x.dtype)


def check_act(name: str) -> str:
    from lowbit.errors import LowbitError

    if name != NONE and name not in ACT_SCHEMES:
        raise LowbitError(f"activation scheme {name!r} is unknown: use {', '.join((NONE, *ACT_SCHEMES))}")
    return name


def attach(model: torch.nn.Module, names, scheme: str) -> list:
    """Round the input of each named Linear with `scheme` at every forward pass."""
    if scheme == NONE:
        return []
    fn = ACT_SCHEMES[scheme]
    return [model.get_submodule(n).register_forward_pre_hook(lambda m, args: (fn(args[0]),) + tuple(args[1:]))
            for n in names]
