"""Which smoothing the walk runs for a request; transforms/smooth.py does the search.

method_args["smooth"] (CLI --smooth): "auto" (the default) smooths GGUF files, searched against
llama.cpp's rounding of weights and inputs (pipeline/gguf.py), and leaves integer formats alone;
"on" also smooths integer formats, searched against round-to-nearest on each Linear's grid
(weights only: their runtimes do not round inputs); "awq" is AWQ's own rule (s = mean|x| ** alpha,
alpha from 20 values per pair) against the same rounding, the default of --method awq and the
way to put AWQ's scaling before GPTQ (--method gptq --smooth awq); "off" never smooths.
Integer formats keep it off by default because the search costs about as much again as GPTQ
(177 s against 96 s on the default model) for -19% KLD at w4 g128.
"""
from __future__ import annotations

import logging

import torch

from lowbit.arch import arch_for
from lowbit.errors import LowbitError
from lowbit.formats import grid_for
from lowbit.transforms.smooth import AWQ_ALPHAS, search_smoothing

log = logging.getLogger(__name__)
SMOOTH = ("auto", "on", "off", "awq")
AWQ_TOKENS = 1024
WEIGHT_ONLY_ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)  # the default model chose 0.5-0.6 at w4 g128


def check_smooth(value) -> str:
    if value not in SMOOTH:
        raise LowbitError(f"smooth must be one of {', '.join(SMOOTH)}, got {value!r}")
    return value


def needs_calibration(spec) -> bool:
    """Smoothing asked for outright: calibration is needed even by methods that need none."""
    return spec.method_args.get("smooth") in ("on", "awq")


def smoothing_transform(model, spec, rounding_for, alphas, wanted: bool, rule: str = "smooth"):
    """The walk's transform, or None (not wanted, no smooth pairs in this architecture, or a
    half-precision model, whose norms could not hold the scales exactly).
    rounding_for(layer, layer_name) -> {linear name: (weight rounding, input rounding)}."""
    arch = arch_for(model)
    if not wanted or not arch.smooth:
        return None
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        log.warning("smoothing skipped: the model is in %s, load it in float32 to smooth", dtype)
        return None
    tokens = spec.method_args.get("smooth_tokens")
    # 8 windows of 512; AWQ's 20 alphas per pair cost 3x the trials, so 2 windows (634 s -> about 160 s
    # on the default model)
    tokens = int(tokens if tokens is not None else AWQ_TOKENS if rule == "awq" else 4096)

    def transform(layer, layer_name: str, batches) -> dict:
        rounding = rounding_for(layer, layer_name)
        pairs = [(p, ls) for p, ls in arch.smooth if all(n in rounding for n in ls)]
        return search_smoothing(layer, pairs, batches, rounding, alphas=alphas, max_tokens=tokens, rule=rule)
    transform.name = "smooth"
    return transform


ACT_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # when inputs are rounded too (SmoothQuant's range)


def format_smoothing(model, spec, targets, fit_layout=None):
    """Smoothing for checkpoint formats: alpha per pair by the layer's output error with every
    target Linear rounded to nearest on the grid it will be stored on, and its input rounded as
    its activation scheme rounds it (W8A8: per-token int8). Runs with smooth "on", or "auto"
    with a method that smooths (smoothquant); the option alpha fixes alpha instead."""
    from lowbit.formats.act_quant import ACT_SCHEMES
    from lowbit.methods import get_method

    def rounding_for(layer, layer_name):
        out = {}
        for name, module in layer.named_modules():
            full = f"{layer_name}.{name}"
            if isinstance(module, torch.nn.Linear) and full in targets:
                s = spec.for_module(full)
                if fit_layout is not None:
                    s = fit_layout(full, s, tuple(module.weight.shape))
                act = ACT_SCHEMES.get(s.act)
                out[name] = (lambda W, g=grid_for(s, "minmax"): g.rtn(W),  # decoded when used
                             act.round_input if act is not None else None)
        return out
    smooth = check_smooth(spec.method_args.get("smooth", "auto"))
    method = get_method(spec.method)
    rule = "awq" if smooth == "awq" or (smooth == "auto" and method.smooths == "awq") else "smooth"
    wanted = smooth in ("on", "awq") or (smooth == "auto" and bool(method.smooths))
    alpha = spec.method_args.get("alpha")
    alphas = ((alpha,) if alpha is not None else AWQ_ALPHAS if rule == "awq"
              else ACT_ALPHAS if spec.act in ACT_SCHEMES else WEIGHT_ONLY_ALPHAS)
    return smoothing_transform(model, spec, rounding_for, alphas, wanted, rule)
