"""SignRound (Cheng et al., 2023; Intel's AutoRound): rounding and clipping learned per decoder
layer against the layer's output, by signed gradient descent.

Each weight w of a Linear gets a rounding offset v in [-0.5, 0.5], and each group two range
factors alpha, beta in [0.5, 1] (its max and min are scaled by them before the grid is made):

    s, z = grid of [beta * min(w), alpha * max(w)]        q = clamp(round(w / s + v) + z)

Rounding passes gradients straight through. All Linears of a layer are tuned together: a step
runs the layer with its weights rounded so on one batch of calibration inputs (from the quantized
layers before it), against the float model's output of the layer on the same samples (the mean
squared error: the walk carries the float model's activations beside the quantized ones, so the
tuning also corrects error from upstream, as AutoRound does; targets="layer" uses the float layer
on the quantized inputs instead), and moves every parameter by
lr * sign(gradient), lr falling linearly from 1 / iters to 0 (AutoRound's default schedule, so
that v can cross its whole range); the parameters of the lowest loss seen are kept. Starting
from v = 0, alpha = beta = 1 the first step is round-to-nearest with min-max grids.

Options (spec.method_args): iters (AutoRound's default is 200; lowbit's CPU default is 50, what
AutoRound's "light" recipe uses), lr (1 / iters), samples per step (4 of the walk's batches of 8;
AutoRound's default is 8 samples of 2048 tokens), seed. Integer grids only: llama.cpp's blocks
and the code books keep their own rounding (round to nearest on them).
"""
from __future__ import annotations

import contextlib
import logging
import typing
from dataclasses import dataclass

import torch

from lowbit.compat import layer_output
from lowbit.formats import QuantizedTensor
from lowbit.formats.int_affine import column_groups, grid_from_range, grouped_view, round_scale
from lowbit.methods.base import Method, register_method
from lowbit.options import options_of

log = logging.getLogger(__name__)
RANGE_MIN = 0.5  # the smallest range factor (the paper's interval [0.5, 1])


@dataclass(frozen=True)
class SignRoundOptions:
    """spec.method_args of --method signround."""
    iters: int = 50  # signed-gradient steps per decoder layer
    lr: float | None = None  # None: 1 / iters
    samples: int = 4  # calibration samples per step (a random subset of one captured batch)
    seed: int = 0  # the order in which calibration batches and samples are drawn
    # what the layer's output is tuned against: "float", the float model's own output (its
    # float inputs through the float layer: upstream rounding error is corrected too, as
    # AutoRound does), or "layer", the float layer on the quantized model's inputs
    targets: str = "float"

    CHOICES: typing.ClassVar[dict] = {"targets": ("float", "layer")}


@dataclass
class Tuned:
    """What the tuning learned for one Linear (the observer quantize() receives)."""
    v: torch.Tensor  # (out, in) rounding offsets
    alpha: torch.Tensor  # (rows, ngroups) factor on the group's max
    beta: torch.Tensor  # (rows, ngroups) factor on the group's min


def _ungroup(x: torch.Tensor, shape) -> torch.Tensor:
    """grouped_view's inverse: (rows, ngroups, G) -> (out, in), the padding dropped."""
    out, inp = shape
    return x.reshape(out, inp) if x.shape[0] != out else x.reshape(out, -1)[:, :inp]


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _ste_scale(s: torch.Tensor, scale_dtype: str | None) -> torch.Tensor:
    """Scales rounded as the file stores them, gradients passed straight through."""
    return s if scale_dtype is None else s + (round_scale(s.detach(), scale_dtype) - s).detach()


def _range(G: torch.Tensor, alpha, beta):
    return G.amin(-1).clamp(max=0) * beta, G.amax(-1).clamp(min=0) * alpha


def _grid(xmin, xmax, bits: int, symmetric: bool, scale_dtype: str | None):
    """grid_from_range (formats/int_affine.py), differentiable in the range (zero by STE)."""
    maxq = 2**bits - 1
    if symmetric:
        half = 2 ** (bits - 1)
        s = torch.maximum(-xmin, xmax) / (half - 1)
        s = _ste_scale(torch.where(s > 0, s, torch.ones_like(s)), scale_dtype)
        return s, torch.full_like(s, float(half)).detach()
    s = (xmax - xmin) / maxq
    s = _ste_scale(torch.where(s > 0, s, torch.ones_like(s)), scale_dtype)
    return s, _ste_round(-xmin / s).clamp(0, maxq)


def fake_quant(W: torch.Tensor, t: Tuned, bits: int, symmetric: bool, group_size: int,
               scale_dtype: str | None) -> torch.Tensor:
    """W rounded with the learned offsets and ranges, differentiable in them."""
    G = grouped_view(W, group_size)
    V = grouped_view(t.v, group_size)
    s, z = _grid(*_range(G, t.alpha, t.beta), bits, symmetric, scale_dtype)
    s, z = s[..., None], z[..., None]
    q = torch.clamp(_ste_round(G / s + V) + z, 0, 2**bits - 1)
    return _ungroup((q - z) * s, W.shape)


def signround_quantize(W: torch.Tensor, t: Tuned, bits: int, symmetric: bool, group_size: int,
                       scale_dtype: str | None = None, act: str = "none") -> QuantizedTensor:
    """The codes fake_quant computes, on the grid the file stores (bit for bit the same values)."""
    W = W.float()
    G = grouped_view(W, group_size)
    xmin, xmax = _range(G, t.alpha, t.beta)
    scale, zero = grid_from_range(xmin, xmax, bits, symmetric, scale_dtype)
    q = torch.clamp(torch.round(G / scale[..., None] + grouped_view(t.v, group_size)) + zero[..., None],
                    0, 2**bits - 1)
    codes = _ungroup(q, W.shape).to(torch.uint8).contiguous()
    g_idx = column_groups(W.shape[1], group_size, W.device)
    return QuantizedTensor(codes, scale, zero, g_idx, bits, group_size, symmetric, act=act)


def _rows(x, idx: torch.Tensor, batch: int):
    """The samples idx of a captured batch: every tensor whose first axis is the batch (hidden
    states, masks, rotary tables, positions), inside tuples and dicts too."""
    if isinstance(x, torch.Tensor):
        return x[idx] if x.dim() and x.shape[0] == batch else x
    if isinstance(x, (tuple, list)):
        return type(x)(_rows(v, idx, batch) for v in x)
    if isinstance(x, dict):
        return {k: _rows(v, idx, batch) for k, v in x.items()}
    return x


@contextlib.contextmanager
def _rounded_forwards(modules: dict, params: dict, grids: dict):
    """Each Linear computes with its weight rounded by the current parameters; the layer's own
    tensors are frozen meanwhile (only the rounding learns)."""
    saved = {}
    for name, m in modules.items():
        g = grids[name]

        def forward(x, m=m, t=params[name], g=g):
            Wq = fake_quant(m.weight, t, g.bits, g.symmetric, g.group_size, g.scale_dtype)
            return torch.nn.functional.linear(x, Wq, m.bias)
        saved[name] = m.forward
        m.forward = forward
    try:
        yield
    finally:
        for name, m in modules.items():
            m.forward = saved[name]


def tune_layer(layer: torch.nn.Module, modules: dict, grids: dict, batches, o: SignRoundOptions,
               forward=contextlib.nullcontext, float_outputs=None) -> tuple[dict[str, Tuned], dict]:
    """Learn offsets and ranges for `modules` (the layer's Linears on integer grids) against
    float_outputs (batches of (hidden, args, kwargs): the float model's outputs of this layer)
    or, without them, the float layer's outputs on `batches`; returns them and {loss_start,
    loss_best}."""
    batches = list(batches)
    if float_outputs is not None:
        targets = [h for h, _, _ in float_outputs]
    else:
        with torch.no_grad(), forward():
            targets = [layer_output(layer(h, *a, **kw)).detach() for h, a, kw in batches]
    params = {}
    for name, m in modules.items():
        G = grouped_view(m.weight.detach().float(), grids[name].group_size)
        params[name] = Tuned(torch.zeros_like(m.weight, dtype=torch.float32, requires_grad=True),
                             torch.ones(G.shape[:2], requires_grad=True), torch.ones(G.shape[:2], requires_grad=True))
    leaves = [p for t in params.values() for p in (t.v, t.alpha, t.beta)]
    best = {n: Tuned(t.v.detach().clone(), t.alpha.detach().clone(), t.beta.detach().clone())
            for n, t in params.items()}
    lr0 = o.lr if o.lr is not None else 1.0 / max(o.iters, 1)
    gen = torch.Generator().manual_seed(o.seed)
    frozen = [p for p in layer.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    first = best_loss = None
    try:
        with torch.enable_grad(), _rounded_forwards(modules, params, grids):
            for step in range(o.iters):
                j = int(torch.randint(len(batches), (1,), generator=gen))
                h, a, kw = batches[j]
                target = targets[j]
                if 0 < o.samples < h.shape[0]:  # a random subset: cost per step follows the samples
                    idx = torch.randperm(h.shape[0], generator=gen)[:o.samples].sort().values
                    h, a, kw, target = _rows((h, a, kw, target), idx, h.shape[0])
                with forward():
                    y = layer_output(layer(h, *a, **kw))
                loss = torch.nn.functional.mse_loss(y.float(), target.float())
                value = float(loss.detach())
                first = value if first is None else first
                if best_loss is None or value < best_loss:  # these are the parameters that gave it
                    best_loss = value
                    for n, t in params.items():
                        best[n].v.copy_(t.v.detach())
                        best[n].alpha.copy_(t.alpha.detach())
                        best[n].beta.copy_(t.beta.detach())
                for p in leaves:
                    p.grad = None
                loss.backward()
                lr = lr0 * (1 - step / o.iters)
                with torch.no_grad():
                    for t in params.values():
                        for p, lo, hi in ((t.v, -0.5, 0.5), (t.alpha, RANGE_MIN, 1.0), (t.beta, RANGE_MIN, 1.0)):
                            if p.grad is not None:
                                p.sub_(lr * torch.sign(p.grad)).clamp_(lo, hi)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return best, {"loss_start": first, "loss_best": best_loss}


@register_method
class SignRound(Method):
    name = "signround"
    needs_calibration = True
    tunes_layers = True
    options = SignRoundOptions

    def float_targets(self, spec):
        return options_of(SignRoundOptions, spec.method_args).targets == "float"

    def tune(self, layer, modules, grids, batches, spec, forward, float_outputs=None):
        ints = {n: m for n, m in modules.items() if grids[n].kind == "int"}
        if not ints:
            return {}, {}
        return tune_layer(layer, ints, grids, batches, options_of(SignRoundOptions, spec.method_args), forward,
                          float_outputs)

    def quantize(self, W, grid, spec, observer=None):
        if grid.kind != "int" or observer is None:  # llama.cpp's blocks and code books: their own rounding
            if grid.kind != "int":
                log.info("signround tunes integer grids; %s uses its own rounding", grid.describe())
            return grid.rtn(W)
        return signround_quantize(W, observer, grid.bits, grid.symmetric, grid.group_size, grid.scale_dtype, grid.act)
