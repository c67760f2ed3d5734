"""How much each Linear's quantization setting costs the model, measured on the float model, so
that a bit budget can be spent where it buys the most (plan/budget.py).

For a Linear y = W x, a change dW of its weight changes the loss by about
    dL ~ 1/2 sum_tokens sum_o g_o^2 (dW_o x)^2 ~ 1/2 N sum_o F_o (dW_o H dW_o^T)
with g the loss gradient at the Linear's output (its square's mean F_o per output channel: the
diagonal empirical Fisher, as SqueezeLLM weights its k-means) and H the mean of x x^T over
calibration tokens (the GPTQ Hessian). The layer-wise error dW H dW^T alone says how far the
Linear's output moves; F says how much the loss cares, which differs by orders of magnitude
between Linears (a value projection early in the model against a gate late in it). Each
candidate setting is quantized with the method that will be used (GPTQ on the same H, or RTN),
so the table holds that method's real error, and the bytes the output format writes for it
(its own fit and packing: codes, scales, zero points, g_idx).

One forward and backward pass of the float model over the calibration samples gathers H and F
(the model is held in memory for it; weights take no gradients).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from lowbit.calibration.hessian import HessianObserver
from lowbit.formats import grid_for
from lowbit.methods import get_method
from lowbit.spec import QuantSpec

log = logging.getLogger(__name__)

# (bits, group size) tried per Linear: every integer setting the uniform presets use, and its
# neighbours (-1: per channel)
CANDIDATES = ((2, 64), (3, 128), (3, 64), (3, 32), (4, 128), (4, 64), (4, 32), (5, 128), (6, 128), (8, -1))


@dataclass
class Option:
    bits: int
    group_size: int  # as requested; the format may store another (fitted_group)
    fitted_group: int
    bytes: int  # stored bytes of the quantized weight (codes, scales, zero points)
    error: float  # predicted loss increase, in the units of sum_o F_o dW_o H dW_o^T

    def as_dict(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "fitted_group": self.fitted_group,
                "bytes": self.bytes, "error": self.error}


def label(bits: int, group: int) -> str:
    return f"w{bits}" + (f"g{group}" if group > 0 else "")


@torch.no_grad()
def gather_statistics(model: torch.nn.Module, targets: dict[str, torch.nn.Linear], calibration: torch.Tensor,
                      batch_size: int = 4, progress=None) -> dict[str, tuple[HessianObserver, torch.Tensor]]:
    """name -> (H observer, F (out,) mean squared loss gradient at the output) over calibration."""
    stats = {n: (HessianObserver(m.in_features), torch.zeros(m.out_features, dtype=torch.float64))
             for n, m in targets.items()}
    tokens = 0
    handles = []

    def watch(name):
        def grad(g):  # returns None: the gradient flows on unchanged
            stats[name][1].add_(g.detach().double().pow(2).sum((0, 1)))

        def hook(module, args, out):
            stats[name][0].add_batch(args[0].detach())
            if out.requires_grad:
                out.register_hook(grad)
        return hook

    def grad_from_here(module, args, out):  # the graph starts at the embedding: no weight gradients
        return out.detach().requires_grad_()

    emb = model.get_input_embeddings()
    handles.append(emb.register_forward_hook(grad_from_here))
    handles += [m.register_forward_hook(watch(n)) for n, m in targets.items()]
    n_batches = -(-len(calibration) // batch_size)
    try:
        for b, i in enumerate(range(0, len(calibration), batch_size)):
            ids = calibration[i:i + batch_size]
            with torch.enable_grad():
                logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                         reduction="sum")  # per-token gradients, unscaled
                loss.backward()
            tokens += ids.numel()
            if progress:
                progress("sensitivity", b + 1, n_batches)
    finally:
        for h in handles:
            h.remove()
    for obs, F in stats.values():
        F /= tokens
    return stats


def options_for(name: str, W: torch.Tensor, observer: HessianObserver, F: torch.Tensor, base: QuantSpec,
                fmt, candidates=CANDIDATES) -> list[Option]:
    """Each candidate setting of one Linear: the bytes the output format `fmt` (a CheckpointFormat)
    writes for it (its own fit and packing) and the predicted loss increase."""
    method = get_method(base.method)
    H = observer.H.double()
    out = []
    for bits, group in candidates:
        spec = fmt.fit(name, replace(base, bits=bits, group_size=group), tuple(W.shape))
        qt = method.quantize(W, grid_for(spec, method.auto_clip), spec, observer)
        dW = (W.double() - qt.dequantize().double())
        err = float((((dW @ H) * dW).sum(1) * F).sum())
        stored = sum(t.numel() * t.element_size() for t in fmt.pack(name, qt, W.dtype).values())
        out.append(Option(bits, group, spec.group_size, int(stored), err))
    return out
