"""Shared set-up for benchmarks: the default model, calibration and evaluation tokens."""
from __future__ import annotations

import copy
import resource

import torch

from lowbit.calibration.text import calibration_samples, default_text, tokenize
from lowbit.eval.perplexity import windows
from lowbit.io import compressed_tensors as ct
from lowbit.io.load import load_model
from lowbit.pipeline import quantize_model


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def setup(nsamples: int = 128, seqlen: int = 512, eval_windows: int = 40, seed: int = 0):
    base = load_model(None)
    calib = calibration_samples(base.tokenizer, default_text("calib"), nsamples, seqlen, seed)
    wins = windows(tokenize(base.tokenizer, default_text("eval")), 512, eval_windows)
    return base, calib, wins


def quantized_copy(base_model, spec, calib):
    """A quantized copy as `lowbit quantize` makes it for compressed-tensors (smoothing too, when
    spec.method_args["smooth"] is "on")."""
    from lowbit.pipeline.sequential import target_linears
    from lowbit.pipeline.smoothing import format_smoothing

    model = copy.deepcopy(base_model)
    torch.manual_seed(0)
    transform = format_smoothing(model, spec, target_linears(model, spec), ct.fit_layout)
    result = quantize_model(model, spec, calib, fit_layout=ct.fit_layout, transforms=[transform])
    return model, result
