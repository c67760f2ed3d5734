"""Shared set-up for benchmarks: the default model, calibration and evaluation tokens."""
from __future__ import annotations

import copy
import resource

import torch

from lowbit.calibration import corpora
from lowbit.calibration.text import calibration_samples, default_calibration, load_texts, tokenize
from lowbit.eval.perplexity import windows
from lowbit.io import compressed_tensors as ct
from lowbit.io.load import load_model
from lowbit.pipeline import quantize_model


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


EVAL_TEXTS = ("wiki",) + corpora.OUT_OF_DOMAIN  # in-domain held out, then domains calibration lacks


def setup(nsamples: int = 128, seqlen: int = 512, eval_windows: int = 40, seed: int = 0):
    """(base, calibration ids of the default mix, evaluation windows of the default text)."""
    base, calib, texts = setup_domains(nsamples, seqlen, eval_windows, seed, ("wiki",))
    return base, calib, texts["wiki"]


def setup_domains(nsamples: int = 128, seqlen: int = 512, eval_windows: int = 40, seed: int = 0,
                  eval_texts=EVAL_TEXTS, calib_texts: str | None = None):
    """(base, calibration ids, {text name: evaluation windows}) for every quality bench.
    calib_texts: named texts or a file (None: the default mix)."""
    base = load_model(None)
    texts = default_calibration()[0] if calib_texts is None else load_texts(calib_texts, "calib")[0]
    calib = calibration_samples(base.tokenizer, texts, nsamples, seqlen, seed)
    wins = {name: windows(tokenize(base.tokenizer, "\n\n".join(load_texts(name, "eval")[0])), 512, eval_windows)
            for name in eval_texts}
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
