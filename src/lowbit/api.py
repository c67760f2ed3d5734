"""Python API: lowbit.quantize(model, "w4g128", out=...), lowbit.evaluate(path)."""
from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Callable

import torch

from lowbit.errors import LowbitError
from lowbit.io.hf_config import load_tokenizer, missing_tokenizer
from lowbit.options import WalkOptions, check_method_args, options_of
from lowbit.transforms.rotate import resolve_rotation, rotation_transform
from lowbit.progress import logging_progress
from lowbit.calibration.text import calibration_samples, load_texts, tokenize
from lowbit.eval.base_cache import BaseHidden
from lowbit.eval.perplexity import evaluate_windows, strided_windows
from lowbit.hardware import resolve_forward_dtype
from lowbit.memory import map_large_allocations
from lowbit.eval.size import bits_per_weight, size_on_disk
from lowbit.io.formats import get_format
from lowbit.io.atomic import check_output
from lowbit.io.checkpoint import save_quantized
from lowbit.io.lazy_weights import load_for_walk
from lowbit.io.load import Loaded, check_finite, load_model
from lowbit.io.shards import DEFAULT_MAX_SHARD_BYTES
from lowbit.methods import get_method
from lowbit.arch import arch_for
from lowbit.pipeline import quantize_model
from lowbit.pipeline.layer_store import LayerStore, work_dir_for
from lowbit.pipeline.sequential import target_linears
from lowbit.pipeline import smoothing
from lowbit.pipeline.gguf import GGUFOutput
from lowbit.pipeline.smoothing import check_smooth, format_smoothing
from lowbit.spec import QuantSpec, preset

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]
DEFAULT_MAX_WINDOWS = 24  # 24 x 512 tokens: the main job's KLD has a standard error under 5% (docs/results.md)


def load(model: str | None = None, allow_pickle: bool = False) -> Loaded:
    return load_model(model, allow_pickle=allow_pickle)


def _as_spec(spec: str | QuantSpec) -> QuantSpec:
    return preset(spec) if isinstance(spec, str) else spec


def _check_weights(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        check_finite(name, p)


def quantize(model: str | Loaded | None = None, spec: str | QuantSpec = "w4g128", out: str | Path | None = None,
             *, calib: str | Path | torch.Tensor | None = None, nsamples: int = 128, seqlen: int = 512, seed: int = 0,
             overwrite: bool = False, allow_pickle: bool = False, progress: Progress | None = None,
             format: str = "compressed-tensors", resume: bool = False,
             checkpoint_seconds: float | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
             gguf_type: str | None = None, acts_memory_bytes: int | None = None,
             tokenizer: str | Path | None = None, discard_partial: bool | None = None) -> dict:
    """Quantize a model and (with `out`) write a checkpoint directory in `format` atomically.

    With `out` and a model on disk (a safetensors directory or the default model), decoder
    layers are read one at a time and each finished layer is saved beside OUT, so a killed
    run continues with resume=True. Returns a summary dict; "loaded" holds the quantized
    (dequantized-weights) model when it was in memory, else None.
    acts_memory_bytes: calibration activations past this (per set of batches; default a
    quarter of the available memory) are kept on disk.

    format="gguf" writes OUT as one GGUF file of llama.cpp file type `gguf_type` (default
    "Q4_K_M"): rtn rounds as llama.cpp does, gptq runs GPTQ on its block grids.
    tokenizer: a directory whose tokenizer to use (for a model saved without one).
    calib: calibration text (a file; None: the default text), or token ids (samples, tokens).
    progress(stage, done, total): called as the work goes on; by default progress goes to the
    `lowbit.progress` logger at INFO. discard_partial: delete a partial run of OUT that is not
    resumed (default: as overwrite); otherwise such a run is kept and this call refused."""
    spec = _as_spec(spec)
    method = get_method(spec.method)
    check_method_args(spec, method)  # a misspelled option is an error, not ignored
    map_large_allocations()  # freed tensors go back to the system, not into a fragmented heap
    check_smooth(spec.method_args.get("smooth", "auto"))
    progress = progress or logging_progress()
    gguf = writer = None
    if format == "gguf" or gguf_type is not None:  # one file of llama.cpp's block grids
        if format != "gguf":
            raise LowbitError(f"a GGUF type ({gguf_type}) was given with format {format!r}: use --format gguf")
        if out is None:
            raise LowbitError("GGUF output needs a file name: give -o OUT.gguf")
        gguf = GGUFOutput(gguf_type or "Q4_K_M", spec)
    else:
        writer = get_format(format)
        writer.check_spec(spec)
    if out is not None:
        out = Path(out)
        check_output(out, overwrite)
    lazy = None
    rotate = options_of(WalkOptions, spec.method_args).rotate
    if isinstance(model, Loaded):
        loaded = model
    elif out is not None:
        loaded, lazy = load_for_walk(model, allow_pickle, outside=False)
    else:
        loaded = load_model(model, allow_pickle)
    _use_tokenizer(loaded, tokenizer)
    if gguf is not None and loaded.tokenizer is None:
        raise missing_tokenizer(loaded.source, "a GGUF file (its vocabulary is stored in the file)")
    if lazy is None:
        _check_weights(loaded.model)
    torch.manual_seed(seed)
    calibration, calib_info = _calibration(method, loaded, calib, nsamples, seqlen, seed, spec)
    if lazy is not None:  # after tokenizing: its working memory is freed before the embedding arrives
        lazy.load_outside()
    rotation = rotation_transform(resolve_rotation(rotate, loaded.model, spec, gguf is not None), seed, lazy)
    rotated = rotation(loaded.model, calibration) if rotation is not None else None  # before any format looks
    if gguf is not None:
        gguf.begin(loaded.model, calibration, keep_float_head=lazy is None)
        fit, transforms = gguf.fit, gguf.transforms
    else:
        fit = writer.fit
        transforms = [format_smoothing(loaded.model, spec, target_linears(loaded.model, spec), fit)]
    store = None
    if out is not None:
        run = {"model": loaded.source, "spec": spec.to_dict(), "calibration": calib_info, "format": format,
               **({"gguf_type": gguf.file_type} if gguf is not None else {})}
        store = LayerStore(work_dir_for(out), run, resume, checkpoint_seconds,
                           discard=overwrite if discard_partial is None else discard_partial)
    result = quantize_model(loaded.model, spec, calibration, fit_layout=fit, progress=progress,
                            lazy=lazy, store=store, acts_budget_bytes=acts_memory_bytes, transforms=transforms,
                            head_observer=gguf.head_observer if gguf is not None else None)
    summary = {"spec": spec.to_dict(), "base_model": loaded.source, "quantize_seconds": result.seconds,
               "layout_changes": result.layout_changes, "calibration": calib_info,
               "quantized_modules": len(result.specs), "format": format}
    if calibration is not None:  # what "auto" became on this machine, for reproducing the run
        summary["forward_dtype"] = result.forward_dtype
    summary["smoothing"] = result.transforms.get("smooth", {})  # alpha per layer and pair ({}: none ran)
    if rotated is not None:
        summary["rotation"] = rotated
    if result.tuning:  # SignRound's loss per layer, before and after
        summary["tuning"] = result.tuning
    if out is not None:
        t0 = time.perf_counter()
        prefix = arch_for(loaded.model).layers
        # tensors the walk never changed (embedding, untied head) are written as the checkpoint
        # stores them: a float16 table stays half the size of its float32 copy, in memory and out
        fetch = functools.partial(lazy.tensor, keep_dtype=True) if lazy is not None else None
        if gguf is not None:
            summary.update(gguf.write(out, loaded, result, store, fetch, prefix, overwrite,
                                      metadata=_gguf_metadata({**summary, "gguf_type": gguf.file_type})))
        else:
            save_quantized(out, loaded.model, loaded.tokenizer, result.tensors, summary, overwrite, format,
                           store=store, layers_prefix=prefix, quantized_names=set(result.specs),
                           max_shard_bytes=max_shard_bytes, fetch=fetch,
                           stored_dtypes=(rotated or {}).get("stored_dtypes"))
        store.remove()
        summary["write_seconds"] = time.perf_counter() - t0
        summary["out"] = str(out)
    summary["loaded"] = None if lazy is not None else Loaded(
        loaded.model, loaded.tokenizer, loaded.source, "quantized", result.tensors, summary)
    return summary


def _gguf_metadata(summary: dict) -> dict:
    """What a GGUF file records of its making ("lowbit.KEY"): eval finds its base there."""
    import json

    from lowbit.recipe import Recipe

    return {"base_model": summary["base_model"], "spec": json.dumps(summary["spec"], sort_keys=True),
            "calibration": json.dumps(summary["calibration"], sort_keys=True),
            "recipe": Recipe.from_run(summary).to_yaml()}


def _calibration(method, loaded: Loaded, calib, nsamples: int, seqlen: int, seed: int, spec: QuantSpec):
    """(token ids (nsamples, seqlen), what they are) for methods that need calibration or
    smoothing asked for (smooth "on"), else (None, None)."""
    if not method.needs_calibration and not smoothing.needs_calibration(spec):
        return None, None
    if isinstance(calib, torch.Tensor):  # token ids given as they are (a benchmark's shared ids)
        if calib.dim() != 2 or calib.dtype not in (torch.int32, torch.int64):
            raise LowbitError(f"calibration ids must be an integer tensor (samples, tokens), got {calib.dtype} "
                              f"of shape {tuple(calib.shape)}: give a text file or such a tensor")
        return calib.long(), {"source": "token ids", "nsamples": calib.shape[0], "seqlen": calib.shape[1]}
    if loaded.tokenizer is None:
        raise missing_tokenizer(loaded.source, f"calibrating {spec.method}")
    texts, source = load_texts(calib, "calib")
    calibration = calibration_samples(loaded.tokenizer, texts, nsamples, seqlen, seed)
    _warn_small_calibration(loaded.model, calibration)
    return calibration, {"source": source, "nsamples": nsamples, "seqlen": seqlen, "seed": seed}


def _use_tokenizer(loaded: Loaded, tokenizer) -> None:
    """A tokenizer given by the user replaces (or supplies) the model's."""
    if tokenizer is None:
        return
    tok = load_tokenizer(Path(tokenizer))
    if tok is None:
        raise LowbitError(f"--tokenizer {tokenizer} has no tokenizer files (tokenizer.json, tokenizer.model, ...): "
                          "give the directory of the model's tokenizer")
    loaded.tokenizer = tok


def _warn_small_calibration(model: torch.nn.Module, calibration: torch.Tensor) -> None:
    widest = max((m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)), default=0)
    tokens = calibration.numel()
    if tokens < 10 * widest or calibration.shape[0] < 16:
        log.warning("calibration is small: %d samples, %d tokens for inputs up to %d wide; statistics "
                    "will be noisy (use --nsamples 128 --seqlen 512 or more)", calibration.shape[0], tokens, widest)


def _resolve_base(loaded: Loaded, base: str | None) -> str | None:
    if base == "none":
        return None
    if base not in (None, "auto"):
        return base
    return loaded.meta.get("base_model") if loaded.kind in ("quantized", "gguf") else None


def _check_same_tokens(loaded: Loaded, base: Loaded, texts: list[str]) -> None:
    """KLD compares next-token distributions position by position: both models must read the
    same token ids and predict over the same vocabulary."""
    width = (loaded.model.get_output_embeddings().out_features, base.model.get_output_embeddings().out_features)
    probe = "\n\n".join(texts)[:4000]
    same = base.tokenizer is None or tokenize(base.tokenizer, probe).tolist() == tokenize(loaded.tokenizer, probe).tolist()
    if width[0] != width[1] or not same:
        why = f"vocabularies of {width[0]} and {width[1]}" if width[0] != width[1] else "different tokenizers"
        raise LowbitError(f"{loaded.source} and its base {base.source} have {why}: KLD needs two models that "
                          "share a tokenizer; give --base such a model, or --base none")


def evaluate(model: str | Loaded | None = None, base: str | Loaded | None = "auto", data: str | Path | None = None,
             seqlen: int = 512, max_windows: int | None = DEFAULT_MAX_WINDOWS, batch_size: int = 2,
             allow_pickle: bool = False, progress: Progress | None = None,
             tokenizer: str | Path | None = None, eval_dtype: str = "float32",
             cache_base: bool = True, stride: int | None = None) -> dict:
    """Perplexity of `model`, and against its base: base perplexity, KLD (with its standard
    error over windows), top-1 agreement. eval_dtype "bfloat16" (or "auto": bf16 on CPUs with
    native bf16) runs the decoders under bf16 autocast, the heads in float32. cache_base: keep
    the base's hidden states on disk and reuse them (eval/base_cache.py). stride: sliding
    windows that start every `stride` tokens and score only their last `stride` (None: the
    GPTQ protocol, non-overlapping windows)."""
    progress = progress or logging_progress()
    loaded = model if isinstance(model, Loaded) else load_model(model, allow_pickle)
    _use_tokenizer(loaded, tokenizer)
    if loaded.tokenizer is None:
        raise missing_tokenizer(loaded.source, "evaluating")
    if isinstance(base, Loaded):
        base_loaded = base
    else:
        base_name = _resolve_base(loaded, base)
        base_loaded = load_model(base_name, allow_pickle) if base_name else None
    texts, data_source = load_texts(data, "eval")
    if base_loaded is not None:
        _check_same_tokens(loaded, base_loaded, texts)
    wins, scored = strided_windows(tokenize(loaded.tokenizer, "\n\n".join(texts)), seqlen, stride, max_windows)
    if eval_dtype not in ("float32", "bfloat16", "auto"):
        raise LowbitError(f"eval dtype {eval_dtype!r} is unknown: use float32, bfloat16 or auto")
    dtype = resolve_forward_dtype(eval_dtype)
    t0 = time.perf_counter()
    hidden = None
    if base_loaded is not None and cache_base:
        hidden = BaseHidden(base_loaded.model, base_loaded.source, wins, batch_size, dtype)
    res = evaluate_windows(loaded.model, wins, base_loaded.model if base_loaded else None,
                           batch_size=batch_size, progress=progress, dtype=dtype, base_hidden=hidden,
                           scored=scored)
    if hidden is not None:
        hidden.save()
        res["base_cached"] = hidden.hit
    res["stride"] = stride or seqlen
    res["eval_seconds"] = time.perf_counter() - t0
    res["data"] = data_source
    res["model"] = loaded.source
    res["base"] = base_loaded.source if base_loaded else None
    src = Path(loaded.source)
    res["size_bytes"] = size_on_disk(src) if src.exists() else None
    res["bits_per_weight"] = bits_per_weight(src) if src.exists() else None
    if base_loaded is not None:
        bsrc = Path(base_loaded.source)
        res["base_size_bytes"] = size_on_disk(bsrc) if bsrc.exists() else None
    return res


def plan_bits(model: str | Loaded | None = None, *, target_bpw: float | None = None, max_size: int | None = None,
              method: str = "gptq", calib: str | Path | torch.Tensor | None = None, nsamples: int = 64,
              seqlen: int = 512, seed: int = 0, allow_pickle: bool = False, progress: Progress | None = None) -> dict:
    """A setting per Linear under a budget (bits per weight of the Linears, or the file's size in
    bytes), chosen by each Linear's measured sensitivity (plan/sensitivity.py, plan/budget.py).
    The plan's "recipe" is what `quantize(..., spec=Recipe.from_dict(recipe).spec)` or
    `lowbit quantize --recipe` runs."""
    from lowbit.plan.budget import plan_budget

    if method not in ("gptq", "rtn"):
        raise LowbitError(f"the bit-budget planner measures gptq or rtn, not {method!r}: use --method gptq or rtn")
    progress = progress or logging_progress()
    loaded = model if isinstance(model, Loaded) else load_model(model, allow_pickle)
    spec = QuantSpec(method="gptq")
    calibration, info = _calibration(get_method("gptq"), loaded, calib, nsamples, seqlen, seed, spec)
    p = plan_budget(loaded.model, calibration, target_bpw=target_bpw, max_size=max_size, method=method,
                    progress=progress)
    p.update(model=loaded.source, calibration=info)
    return p
