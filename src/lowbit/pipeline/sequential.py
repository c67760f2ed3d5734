"""The sequential layer walk every method plugs into.

capture inputs of layer 0 -> for each decoder layer: for each group of Linears in
true-sequential order, gather the method's statistics with hooks, quantize the group
-> run the quantized layer to produce the next layer's inputs. Peak memory is one
layer's work plus two sets of calibration activations.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from lowbit.arch import arch_for, decoder_layers, head_input_modules
from lowbit.errors import LowbitError
from lowbit.formats import QTensor, grid_for
from lowbit.formats.act_quant import attach
from lowbit.hardware import resolve_forward_dtype
from lowbit.memory import release_free_memory
from lowbit.methods import get_method
from lowbit.options import WalkOptions, options_of
from lowbit.pipeline.activations import Activations, default_budget_bytes
from lowbit.pipeline.capture import StopAfter, capture_first_layer_inputs, run_layer
from lowbit.pipeline.output_cache import OutputCache
from lowbit.spec import QuantSpec, match_name

log = logging.getLogger(__name__)
note = logging.getLogger("lowbit.note")  # what a user should know (the CLI shows it)

# fit_layout(name, spec, (out, in)) -> spec the output format can store (e.g. a group
# size that divides the row); the walk quantizes with exactly what will be written.
FitLayout = Callable[[str, QuantSpec, tuple], QuantSpec]
Progress = Callable[[str, int, int], None]
DEFAULT_CACHE_BYTES = 2 << 30  # Linear outputs replayed within a layer (see output_cache.py)


@dataclass
class QuantResult:
    tensors: dict[str, QTensor] = field(default_factory=dict)
    specs: dict[str, QuantSpec] = field(default_factory=dict)  # effective spec per module
    layout_changes: dict[str, dict] = field(default_factory=dict)  # name -> {requested, used}
    seconds: float = 0.0
    stored_layers: int = 0  # decoder layers whose codes live in the LayerStore, not in `tensors`
    forward_dtype: str = "float32"  # calibration forwards as run ("auto" resolved)
    transforms: dict[str, dict] = field(default_factory=dict)  # transform name -> what it chose (per layer)
    tuning: dict[str, dict] = field(default_factory=dict)  # layer -> what a layer-tuning method reports


def target_linears(model: torch.nn.Module, spec: QuantSpec) -> dict[str, torch.nn.Linear]:
    """Linear modules selected by spec.targets and not excluded by spec.ignore."""
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        wanted = any(t == "Linear" or match_name(name, t) for t in spec.targets)
        if wanted and not any(match_name(name, p) for p in spec.ignore):
            out[name] = module
    return out


def _groups_in_layer(arch, prefix: str, targets: dict) -> list[list[str]]:
    """Target names inside one layer, in dependency order; unlisted Linears go last."""
    inside = [n for n in targets if n.startswith(prefix + ".")]
    groups, seen = [], set()
    for rel_group in arch.sequential:
        g = [f"{prefix}.{r}" for r in rel_group if f"{prefix}.{r}" in targets]
        if g:
            groups.append(g)
            seen.update(g)
    rest = [n for n in inside if n not in seen]
    if rest:
        groups.append(rest)
    return groups


def _frozen_containers(layer, layer_name: str, targets: dict, done: dict):
    """Submodules of a layer (not the layer itself) whose target Linears are all quantized:
    their inputs come from earlier, already fixed parts of the layer, so their outputs are
    fixed too."""
    for rel, module in layer.named_modules():
        if not rel or isinstance(module, torch.nn.Linear):
            continue
        inner = [f"{layer_name}.{rel}.{n}" for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
        inner = [n for n in inner if n in targets]
        if inner and all(n in done for n in inner):
            yield f"{layer_name}.{rel}", module


def _forward_context(dtype: str):
    """Calibration forward passes in float32, or in bfloat16 by autocast (AVX-512 BF16 and
    AMX run bf16 matmuls several times faster; weights are still quantized from float32).
    dtype is already resolved (hardware.resolve_forward_dtype)."""
    if dtype == "float32":
        return contextlib.nullcontext
    if dtype == "bfloat16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    raise ValueError(f"forward_dtype must be auto, float32 or bfloat16, got {dtype!r}")


def _feed_head(model, arch, batches, head_inputs, forward) -> None:
    modules = head_input_modules(model, arch)
    for h, _, _ in batches:
        with forward():
            for m in modules:
                h = m(h)
        head_inputs(h)


def _device_type(model: torch.nn.Module) -> str:
    for p in model.parameters():
        if not p.is_meta:
            return p.device.type
    return "cpu"


def _layout_change(asked: QuantSpec, used: QuantSpec) -> dict:
    """What the output format changed: {"requested": 128, "used": 96} for the group size,
    plus any method option it had to change (e.g. static_groups)."""
    change = {}
    if used.group_size != asked.group_size:
        change.update(requested=asked.group_size, used=used.group_size)
    for key, value in used.method_args.items():
        if asked.method_args.get(key) != value:
            change[key] = {"requested": asked.method_args.get(key), "used": value}
    return change


@torch.no_grad()
def quantize_model(model: torch.nn.Module, spec: QuantSpec, calibration: torch.Tensor | None = None,
                   fit_layout: FitLayout | None = None, progress: Progress | None = None,
                   batch_size: int = 8, lazy=None, store=None,
                   acts_budget_bytes: int | None = None,
                   head_observer=None, transforms: list | None = None,
                   model_transforms: list | None = None) -> QuantResult:
    """Quantize `model` in place (weights become their dequantized values) and return the
    codes of every quantized Linear. calibration: token ids (N, T) for methods that need it.

    lazy (io.lazy_weights.LazyModel): decoder layers are read from disk when reached and
    dropped after. store (pipeline.layer_store.LayerStore): each finished layer is saved
    (codes then leave memory) and a killed run resumes after the newest saved activations.
    acts_budget_bytes: calibration activations past it (per set; default a quarter of the
    available memory) are written to disk, beside the store or in a temporary directory.
    head_observer (an Observer with state / load_state): given the output matrix's input (the
    last layer's output through the final norm) for every calibration batch, for a caller that
    quantizes the head itself (GGUF's tied token_embd); with a store its state is saved beside
    the last layer, and restored when a resumed run had finished every layer.
    transforms: per-layer transforms, in order: transform(layer, layer_name, batches) -> dict, an
    equivalent change of the float layer (transforms/), made before its Linears are observed and
    quantized, in float32, with the layer's calibration inputs; what it returns is kept in
    result.transforms[transform.name][layer_name]. model_transforms: whole-model transforms, in
    order, before the walk (rotations change embedding, norms and head together):
    transform(model, calibration) -> dict, kept in result.transforms[transform.name]; a model
    read layer by layer takes only those marked layer_by_layer = True."""
    start = time.perf_counter()
    method = get_method(spec.method)
    transforms = [t for t in (transforms or []) if t is not None]
    result_transforms = {getattr(t, "name", "transform"): {} for t in transforms}
    for t in model_transforms or []:
        if lazy is not None and not getattr(t, "layer_by_layer", False):
            raise LowbitError(f"the {getattr(t, 'name', 'model')} transform needs the whole model in memory: "
                              "load it in memory (lowbit.load) before quantizing")
        result_transforms[getattr(t, "name", "model")] = t(model, calibration)
    arch = arch_for(model)
    layers = decoder_layers(model, arch)
    targets = target_linears(model, spec)
    result = QuantResult()
    result.transforms = result_transforms

    def fitted_spec(name: str) -> QuantSpec:
        mspec = spec.for_module(name)
        if fit_layout is not None:
            fitted = fit_layout(name, mspec, tuple(targets[name].weight.shape))
            change = _layout_change(mspec, fitted)
            if change:
                result.layout_changes[name] = change
            mspec = fitted
        return mspec

    def quantize_one(name: str, observer=None):
        module = targets[name]
        mspec = fitted_spec(name)
        qt = method.quantize(module.weight.data, grid_for(mspec, method.auto_clip), mspec, observer)
        release_free_memory()
        module.weight.data.copy_(qt.dequantize().to(module.weight.dtype))
        qt.drop_decoded()  # the weight holds them: a layer of GGML values would be held twice
        attach(module, qt)  # later layers see what the runtime computes (activation rounding, int8 kernels)
        result.tensors[name], result.specs[name] = qt, mspec

    # resolved and checked before any calibration work
    walk = options_of(WalkOptions, spec.method_args)
    result.forward_dtype = resolve_forward_dtype(walk.forward_dtype,
                                                 _device_type(model))
    forward = _forward_context(result.forward_dtype)
    prefix = arch.layers
    needs_acts = method.needs_calibration or bool(transforms)  # a transform searches on them
    start_at = 0
    if store is not None:
        start_at = _restore(store, model, layers, prefix, result, lazy is None, needs_acts)
        if head_observer is not None and start_at == len(layers):
            saved = store.load_extra("head-observer")
            if saved is None:  # saved beside the last layer, so only a store of an older lowbit lacks it
                raise LowbitError(f"the partial run in {store.dir} holds no statistics of the output matrix: "
                                  "rerun with --overwrite")
            head_observer.load_state(saved)
    batches = floats = None  # floats: the float model's own stream, for a method tuning against it
    keeps_floats = method.tunes_layers and method.float_targets(spec)
    if needs_acts and start_at < len(layers):
        if calibration is None:
            raise ValueError(f"method {spec.method!r} needs calibration token ids" if method.needs_calibration
                             else "the transform needs calibration token ids")
        spill = store.dir / "spill" if store is not None else None
        batches = capture_first_layer_inputs(model, layers, calibration, batch_size,
                                             Activations(acts_budget_bytes, spill))
        if lazy is not None:
            lazy.drop_input_embeddings()
        if start_at > 0:  # continue from the saved activations after layer start_at - 1
            hidden = list(store.load_acts(start_at - 1))  # with floats: the quantized set, then the float one
            sets = [hidden[:len(batches)], hidden[len(batches):]] if keeps_floats else [hidden]
            restored = [batches.new().extend((h, a, kw) for h, (_, a, kw) in zip(part, batches)) for part in sets]
            batches.discard()
            batches, floats = restored[0], (restored[1] if keeps_floats else None)
        elif keeps_floats:  # equal before layer 0 (the tensors are shared, not copied)
            floats = batches.new().extend(batches)
        if batches.spilled:
            log.info("%d of %d calibration batches are kept on disk (memory budget %.2f GB per set)",
                     batches.spilled, len(batches), batches.budget / 1e9)
    elif lazy is not None:  # no forward passes: the embedding table waits on disk for the writer
        lazy.drop_input_embeddings()
    true_sequential = walk.true_sequential
    if batches is not None:
        log.info("calibration forward passes in %s", result.forward_dtype)
    cache = OutputCache(int(walk.cache_bytes if walk.cache_bytes is not None
                            else min(DEFAULT_CACHE_BYTES, default_budget_bytes())))
    if progress:
        progress("layers", start_at, len(layers))  # the clock of the time-left estimate starts here
    try:
        for i, layer in enumerate(layers):
            if i < start_at:
                continue
            if lazy is not None:
                lazy.materialize(layer, f"{prefix}.{i}")
            if batches is not None:
                for t in transforms:
                    result.transforms[getattr(t, "name", "transform")][f"{prefix}.{i}"] = t(layer, f"{prefix}.{i}", batches)
            groups = _groups_in_layer(arch, f"{prefix}.{i}", targets)
            tuned = {}
            float_outputs = None
            if batches is not None and method.tunes_layers:  # the whole layer's Linears at once
                inside = {n: targets[n] for g in groups for n in g}
                grids = {n: grid_for(fitted_spec(n), method.auto_clip) for n in inside}
                if floats is not None:  # the float layer on the float model's inputs: the targets
                    with forward():
                        float_outputs = run_layer(layer, floats, out=batches.new())
                tuned, report = method.tune(layer, inside, grids, batches, spec, forward, float_outputs)
                result.tuning[f"{prefix}.{i}"] = report
            if not true_sequential:  # one pass: every Linear sees inputs from the float layer
                groups = [[n for g in groups for n in g]]
            for group in groups:
                observers = {}
                if batches is not None and method.needs_calibration:
                    observers = {n: method.observer(targets[n], spec.for_module(n)) for n in group}
                    observers = {n: o for n, o in observers.items() if o is not None}  # smoothquant: none
                if observers:
                    stopper = StopAfter({n: targets[n] for n in group},
                                        lambda n, x: observers[n].add_batch(x))
                    try:
                        with forward():
                            stopper.run(layer, batches, cache)
                    finally:
                        stopper.remove()
                    for name, owner in stopper.shared.items():  # same input, same statistics
                        observers[name] = observers[owner]
                for name in group:  # popped: each holds an (in, in) Hessian and its factor (0.25 GB for a
                    observer = observers.pop(name, None)  # 5632-wide input), freed once used
                    if observer is not None:  # no other Linear of the group reads this input
                        observer.last_use = all(o is not observer for o in observers.values())
                    else:
                        observer = tuned.pop(name, None)
                    quantize_one(name, observer)
                    del observer
                    if batches is not None:
                        cache.add(name, targets[name])
                if batches is not None:
                    for cname, container in _frozen_containers(layer, f"{prefix}.{i}", targets, result.tensors):
                        cache.add(cname, container)
            if batches is not None:
                with forward():
                    outputs = run_layer(layer, batches, cache, out=batches.new())
                batches.discard()
                batches = outputs
                if floats is not None:
                    floats.discard()
                    floats = float_outputs
                cache.clear()
                if head_observer is not None and i == len(layers) - 1:
                    _feed_head(model, arch, batches, head_observer.add_batch, forward)
                    if store is not None:
                        store.save_extra("head-observer", head_observer.state())
            if store is not None:
                _save_layer(store, i, layer, f"{prefix}.{i}", result, batches, last=i == len(layers) - 1,
                            lazy=lazy is not None, floats=floats)
            if lazy is not None:
                lazy.release(layer)
            release_free_memory()  # freed activations and solve work stay with the process otherwise
            if progress:
                progress("layers", i + 1, len(layers))
    finally:  # spilled activations never outlive the walk
        for acts in (batches, floats):
            if acts is not None:
                acts.discard()
    if store is not None:
        store.mark_complete(len(layers))
    # Linears outside the decoder layers (an lm_head the user asked for): weights only
    for name in targets:
        if not name.startswith(prefix + ".") and name not in result.tensors:
            if lazy is not None and targets[name].weight.is_meta:
                lazy.load_module(name)
            quantize_one(name, None)
    result.seconds = time.perf_counter() - start
    if result.layout_changes:
        log.info("%d layers changed layout to fit the output format", len(result.layout_changes))
    return result


def _restore(store, model, layers, prefix: str, result: QuantResult, in_memory: bool,
             needs_acts: bool) -> int:
    """Take back the layers a killed run finished; returns the first layer to compute."""
    done = store.resume_point(needs_acts)
    for j in range(done + 1):
        tensors, specs, changes, plain = store.load_layer(j)
        result.specs.update(specs)
        result.layout_changes.update(changes)
        if in_memory:  # the returned model holds dequantized weights, as if computed now
            layer = layers[j]
            for name, qt in tensors.items():
                rel = name[len(f"{prefix}.{j}."):]
                w = layer.get_submodule(rel).weight
                w.data.copy_(qt.dequantize().to(w.dtype))
                attach(layer.get_submodule(rel), qt)
            layer.load_state_dict({k[len(f"{prefix}.{j}."):]: v for k, v in plain.items()}, strict=False)
    result.stored_layers = done + 1
    if done >= 0:
        note.info("resuming: layers 0-%d of %d are done (%s); continuing at layer %d",
                    done, len(layers), store.dir, done + 1)
    elif store.resumed:
        kept = store.layers_saved()
        why = (f" ({kept} finished layers are saved, but no calibration activations after them)"
               if kept else "")
        note.info("resuming: nothing in %s to continue from%s; starting at layer 0", store.dir, why)
    return done + 1


def _save_layer(store, i: int, layer, layer_name: str, result: QuantResult, batches, last: bool,
                lazy: bool, floats=None) -> None:
    """Layer i's codes and other tensors to disk (with a lazy model its codes then leave memory)."""
    mine = {n: qt for n, qt in result.tensors.items() if n.startswith(layer_name + ".")}
    quantized_weights = {n[len(layer_name) + 1:] + ".weight" for n in mine}
    plain = {f"{layer_name}.{k}": v.detach().clone() for k, v in layer.state_dict().items()
             if k not in quantized_weights}
    store.save_layer(i, mine, result.specs, result.layout_changes, plain)
    if lazy:  # codes of a model too big for memory live on disk only
        for n in mine:
            del result.tensors[n]
    result.stored_layers = i + 1
    if batches is not None and not last:
        store.maybe_save_acts(i, batches.hidden() + (floats.hidden() if floats is not None else []))
