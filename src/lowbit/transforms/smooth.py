"""Equivalent per-channel rescaling before quantizing: SmoothQuant's migration of activation
range into weights, with AWQ's per-layer search for how much to migrate.

A pair (prev -> linears) names where the linears' common input comes from: a norm whose weight
multiplies it, or a Linear whose output rows it is (arch.ArchMap.smooth). Dividing prev's
weight (and bias) by s per channel and multiplying the linears' input columns by s leaves the
float layer's function unchanged. What changes is what rounding does: when the runtime rounds
inputs as well as weights (llama.cpp quantizes every input row in blocks of 32 or 256 against
the block's largest value), a channel much larger than its neighbours costs them precision,
and s moves some of its range into the weight columns.

    s_j = amax(x_j) ** alpha / amax(W[:, j]) ** (1 - alpha), scaled to geometric mean 1

alpha per pair is chosen from a grid by the layer's output error (sum of squares) with the
layer's weights and inputs rounded as the target runtime rounds them, on the first calibration
batches; a pair keeps s = 1 unless some alpha lowers that error.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch

from lowbit.compat import layer_output

ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # the default model's layers chose 0.5-1.0 from 0.2-1.0
PIECE_TOKENS = 512  # tokens per forward pass of a trial: its activations, not a batch's
# name -> (weight rounding, input rounding or None): how the target runtime rounds a Linear
Rounding = dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable | None]]


def smoothing_scales(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-channel s for one pair (float32, geometric mean 1)."""
    x = x_absmax.float().clamp(min=1e-5)
    w = w_absmax.float().clamp(min=1e-5)
    s = x.pow(alpha) / w.pow(1 - alpha)
    return s / s.log().mean().exp()


def awq_scales(x_absmean: torch.Tensor, alpha: float) -> torch.Tensor:
    """AWQ's per-channel s = mean|x| ** alpha (Lin et al.): salient channels, those with large
    inputs on average, are scaled up before rounding, so their weights lose less (normalised
    to sqrt(max * min) = 1, as the reference implementation does)."""
    s = x_absmean.float().clamp(min=1e-4).pow(alpha)
    return s / (s.max() * s.min()).sqrt()


AWQ_ALPHAS = tuple(i / 20 for i in range(20))  # AWQ's grid (0: no scaling)


@torch.no_grad()
def scale_pair(layer: torch.nn.Module, prev: str, linears: tuple[str, ...], s: torch.Tensor) -> None:
    """Divide the input of `linears` by s at its source and multiply their columns by s."""
    src = layer.get_submodule(prev)
    for name in linears:
        w = layer.get_submodule(name).weight
        w.copy_((w.float() * s).to(w.dtype))
    if isinstance(src, torch.nn.Linear):  # rows of the producing Linear
        src.weight.copy_((src.weight.float() / s[:, None]).to(src.weight.dtype))
    else:  # a norm's elementwise weight
        src.weight.copy_((src.weight.float() / s).to(src.weight.dtype))
    if getattr(src, "bias", None) is not None:
        src.bias.copy_((src.bias.float() / s).to(src.bias.dtype))


def _split(batch, most_rows: int):
    """A captured (hidden, args, kwargs) batch as pieces of at most most_rows sequences: the
    trials' forward passes then hold a piece's activations, not a whole batch's. Tensors of
    two or more dims whose first dim is the batch's are sliced with it (masks, positions,
    rotary tables of shape (B, ...)); the rest (shared (1, ...) tables, scalars) are kept."""
    h, a, kw = batch
    rows = h.shape[0]

    def part(v, i):
        if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[0] == rows:
            return v[i:i + most_rows]
        if isinstance(v, (tuple, list)):
            return type(v)(part(x, i) for x in v)
        return v
    if rows <= most_rows:
        return [batch]
    return [(h[i:i + most_rows], part(a, i), {k: part(v, i) for k, v in kw.items()})
            for i in range(0, rows, most_rows)]


class _Sample:
    """The first calibration batches of a layer, as pieces of about PIECE_TOKENS tokens: float
    outputs and per-channel input absmax."""

    def __init__(self, layer, pairs, batches, max_tokens: int):
        self.batches, tokens = [], 0
        for batch in batches:
            most_rows = max(1, PIECE_TOKENS // batch[0].shape[1])
            self.batches.extend(_split(batch, most_rows))
            tokens += batch[0].shape[0] * batch[0].shape[1]
            if tokens >= max_tokens:
                break
        self.absmax: dict[str, torch.Tensor] = {}
        self.abssum: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        hooks = [layer.get_submodule(linears[0]).register_forward_pre_hook(self._stat(prev))
                 for prev, linears in pairs]
        try:
            self.targets = [self.output(layer, b) for b in self.batches]
        finally:
            for h in hooks:
                h.remove()

    def absmean(self, key) -> torch.Tensor:
        return self.abssum[key] / self.count[key]

    def _stat(self, key):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).abs().float()
            a, total = x.amax(0), x.sum(0)
            self.absmax[key] = a if key not in self.absmax else torch.maximum(self.absmax[key], a)
            self.abssum[key] = total if key not in self.abssum else self.abssum[key] + total
            self.count[key] = self.count.get(key, 0) + x.shape[0]
        return hook

    @staticmethod
    def output(layer, batch) -> torch.Tensor:
        h, a, kw = batch
        return layer_output(layer(h, *a, **kw)).detach()

    def error(self, layer) -> float:
        """Sum of squares of the layer's output minus the float targets, a piece at a time."""
        return math.fsum(float((self.output(layer, b).float() - t.float()).pow(2).sum())
                         for b, t in zip(self.batches, self.targets))


def _held(v: torch.Tensor) -> torch.Tensor:
    """A copy of a parameter in the narrowest dtype that holds it exactly: a float32 layer
    loaded from a float16 checkpoint is kept at half the bytes until it is scaled."""
    for dtype in (torch.float16, torch.bfloat16):
        if v.dtype == torch.float32:
            narrow = v.to(dtype)
            if torch.equal(narrow.float(), v):
                return narrow
    return v.detach().clone()


def _assign(weight: torch.Tensor, rounded) -> None:
    """Write a rounding into a weight: a tensor, or a quantized tensor (decoded here, so the
    search can hold a rounding as its blocks: 0.56 bytes per weight at Q4_K, not 4)."""
    weight.data.copy_(rounded if isinstance(rounded, torch.Tensor) else rounded.dequantize())


@contextlib.contextmanager
def _rounded(layer, rounding: Rounding, cached: dict, keys: dict, restore: Callable[[], None]):
    """The layer's Linears hold their rounded weights and round their inputs; restore() puts
    the float weights back (from the search's one copy of them, not a second one here).
    cached[keys[name]]: a rounded weight (a tensor, or a quantized tensor that decodes to it),
    reused while the alphas that shape it are the same."""
    hooks = []
    try:
        for name, (wfn, xfn) in rounding.items():
            m = layer.get_submodule(name)
            key = keys[name]
            if key not in cached:
                cached[key] = wfn(m.weight.detach())
            _assign(m.weight, cached[key])
            if xfn is not None:
                hooks.append(m.register_forward_pre_hook(lambda mod, args, f=xfn: (f(args[0]),) + tuple(args[1:])))
        yield
    finally:
        for h in hooks:
            h.remove()
        restore()


@torch.no_grad()
def search_smoothing(layer: torch.nn.Module, pairs, batches, rounding: Rounding,
                     alphas=ALPHAS, max_tokens: int = 4096, rule: str = "smooth") -> dict[str, float]:
    """Choose alpha per pair (coordinate search, pairs in order) and leave the layer scaled by
    the choice, still computing the same float function. Returns {prev: alpha} of the pairs
    that were scaled. pairs: ((prev, (linear, ...)), ...) relative to the layer.
    rule: "smooth" (smoothing_scales: input absmax against weight absmax) or "awq"
    (awq_scales: mean |input| alone)."""
    pairs = [(p, tuple(ls)) for p, ls in pairs]
    if not pairs:
        return {}
    sample = _Sample(layer, pairs, batches, max_tokens)
    touched = {p for p, _ in pairs} | {n for _, ls in pairs for n in ls} | set(rounding)
    original = {n: {k: _held(v.detach()) for k, v in layer.get_submodule(n).named_parameters()}
                for n in touched}
    w_absmax = {p: torch.cat([layer.get_submodule(n).weight.detach().float() for n in ls]).abs().amax(0)
                for p, ls in pairs}
    cached: dict = {}
    shaped_by = {n: [p for p, ls in pairs if n == p or n in ls] for n in rounding}

    def apply(choice):
        for n, params in original.items():
            for k, v in layer.get_submodule(n).named_parameters():
                v.data.copy_(params[k])
        for p, ls in pairs:
            if p in choice:
                s = (awq_scales(sample.absmean(p), choice[p]) if rule == "awq"
                     else smoothing_scales(sample.absmax[p], w_absmax[p], choice[p]))
                scale_pair(layer, p, ls, s)

    def keys_of(choice) -> dict:
        return {n: (n,) + tuple(choice.get(p) for p in ps) for n, ps in shaped_by.items()}

    def error(choice) -> float:
        apply(choice)
        keys = keys_of(choice)
        # rounded weights worth keeping: those of the best choice so far (reused by every
        # later trial of another pair) and this trial's; all trials' would be a layer per alpha
        wanted = set(keys.values()) | set(keys_of(best).values())
        for key in [k for k in cached if k not in wanted]:
            del cached[key]
        with _rounded(layer, rounding, cached, keys, lambda: apply(choice)):
            return sample.error(layer)

    best: dict[str, float] = {}
    best_err = error(best)
    for p, _ in pairs:
        for alpha in alphas:
            err = error({**best, p: alpha})
            if err < best_err:
                best_err, best[p] = err, alpha
    apply(best)
    return best
