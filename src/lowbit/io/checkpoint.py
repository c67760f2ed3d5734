"""Save a quantized model as a compressed-tensors directory, and read one back into a
runnable torch model (weights dequantized to float)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from lowbit import __version__
from lowbit.io.formats import detect_format, get_format
from lowbit.io.atomic import atomic_dir
from lowbit.io.shards import DEFAULT_MAX_SHARD_BYTES, ShardWriter
from lowbit.memory import release_free_memory

log = logging.getLogger(__name__)
META_FILE = "lowbit.json"


def _plain_state(model: torch.nn.Module, quantized: set[str], skip_prefix: str | None = None,
                 fetch=None, stored_dtypes: dict | None = None):
    """Yields every tensor except quantized weights (and those under skip_prefix), tied
    duplicates once. Tensors left on the meta device (a layer-by-layer run keeps the
    embeddings on disk) are read by fetch(name) one at a time."""
    seen = set()
    for k, v in model.state_dict(keep_vars=True).items():
        if k.endswith(".weight") and k[: -len(".weight")] in quantized:
            continue
        if skip_prefix and k.startswith(skip_prefix + "."):
            continue
        # tied weights (lm_head = embed_tokens) are one object (meta) or one storage: the
        # config re-ties them
        key = id(v) if v.is_meta else (v.data_ptr(), tuple(v.shape), v.dtype)
        if v.numel() and key in seen:
            continue
        seen.add(key)
        if v.is_meta:
            if fetch is None:
                raise ValueError(f"{k} was never loaded")
            v = fetch(k)
        if stored_dtypes and k in stored_dtypes:  # a tensor the walk made to be stored narrower
            v = v.to(getattr(torch, stored_dtypes[k]))
        yield k, v.detach()
        v = None  # written: not held while the next one is read (two 0.4 GB tables at once)


# lowbit.json keeps what the output *is*; run times differ between runs and would break
# byte-identical outputs, so they are reported, not written
VOLATILE_META = ("quantize_seconds", "write_seconds", "out", "resumed_from_layer")


def save_quantized(out, model, tokenizer, tensors: dict, meta: dict, overwrite: bool = False,
                   fmt: str = "compressed-tensors", store=None, layers_prefix: str | None = None,
                   quantized_names: set[str] | None = None,
                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, fetch=None,
                   stored_dtypes: dict[str, str] | None = None) -> Path:
    """Write OUT atomically in checkpoint format `fmt`: config.json (+ quantization_config),
    safetensors shards, tokenizer files, and lowbit.json (base model, spec, layout changes).

    tensors: codes in memory; with a LayerStore `store`, the decoder layers' codes and
    tensors are read from it one layer at a time (layers_prefix names the layer list);
    fetch(name) reads tensors the model holds only on the meta device. stored_dtypes: name ->
    dtype name of float tensors stored narrower than the model's (a rotation's head copy)."""
    dtype = next(model.parameters()).dtype
    writer = get_format(fmt)
    names = set(quantized_names or ()) | set(tensors)
    ignore = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in names]
    with atomic_dir(out, overwrite) as tmp:
        shards = ShardWriter(tmp, max_shard_bytes)
        release_free_memory()  # what the walk freed, before tables are read back from disk
        for k, v in _plain_state(model, names, layers_prefix if store is not None else None, fetch, stored_dtypes):
            shards.add({k: v})
            del v
        in_store = (lambda n: store is not None and n.startswith(layers_prefix + "."))
        for name, qt in tensors.items():
            if not in_store(name):
                shards.add(writer.pack(name, qt, dtype))
        all_tensors = dict(tensors)
        if store is not None:
            i = 0
            while store.layer_file(i).is_file():
                layer_tensors, _, _, plain = store.load_layer(i)
                shards.add({k: v.to(dtype) if v.is_floating_point() else v for k, v in plain.items()})
                for name, qt in layer_tensors.items():
                    shards.add(writer.pack(name, qt, dtype))
                all_tensors.update({n: qt.header_only() for n, qt in layer_tensors.items()})
                del layer_tensors, plain
                release_free_memory()  # each layer's freed codes would otherwise stay in glibc's heap
                i += 1
        shards.finish()
        cfg = model.config.to_dict()
        cfg["quantization_config"] = writer.quantization_config(all_tensors, ignore)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if tokenizer is not None:  # a model saved without one is quantized without one
            tokenizer.save_pretrained(tmp, legacy_format=False)
        meta = {"lowbit_version": __version__, "format": fmt,
                **{k: v for k, v in meta.items() if k not in VOLATILE_META}}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if "spec" in meta:  # `quantize --recipe OUT/recipe.yaml` makes the same bytes again
            from lowbit.recipe import RECIPE_FILE, Recipe
            (tmp / RECIPE_FILE).write_text(Recipe.from_run(meta).to_yaml())
    return Path(out)


def read_quantized(path: Path, dtype=torch.float32, error: type[Exception] = ValueError):
    """(the model's skeleton on the meta device, its codes by module, every other tensor by name)
    of a quantized directory in any registered format; `error` is raised for a format lowbit
    does not read."""
    from transformers import AutoModelForCausalLM

    from lowbit.io.hf_config import load_config

    config = load_config(path)
    qconfig = config.quantization_config
    qconfig = qconfig if isinstance(qconfig, dict) else qconfig.to_dict()
    del config.quantization_config
    fmt = detect_format(qconfig)
    if fmt is None:
        raise error(f"{path}: quantization_config {qconfig.get('quant_method')!r} is not a format lowbit reads")
    tensors, plain = fmt.read_tensors(path, qconfig)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, tensors, plain


def load_quantized(path: Path, dtype=torch.float32):
    """A quantized directory (any registered format) as a float torch model plus its codes."""
    from lowbit.compat import init_nonpersistent_buffers
    from lowbit.io.hf_config import load_tokenizer
    from lowbit.io.loaded import Loaded

    model, tensors, plain = read_quantized(path, dtype)
    model.to_empty(device="cpu")
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in plain.items()}
    for name, qt in tensors.items():
        state[f"{name}.weight"] = qt.dequantize().to(dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{path}: tensors the model does not have: {unexpected[:3]}")
    model.tie_weights()
    missing = [k for k in missing if k not in _tied_keys(model)]
    non_buffers = [k for k in missing if k in dict(model.named_parameters())]
    if non_buffers:
        raise ValueError(f"{path}: weights missing from the checkpoint: {non_buffers[:3]}")
    init_nonpersistent_buffers(model)
    attach_activation_rounding(model, tensors)
    meta = {}
    if (path / META_FILE).is_file():
        meta = json.loads((path / META_FILE).read_text())
    return Loaded(model.eval(), load_tokenizer(path), str(path.resolve()), "quantized", tensors, meta)


def attach_activation_rounding(model, tensors: dict) -> None:
    """Each Linear whose codes record an activation scheme (FP8 per-token inputs, W8A8, LLM.int8)
    computes as the runtime that loads the file does: rounded inputs, int8 kernels."""
    from lowbit.formats.act_quant import attach

    for name, qt in tensors.items():
        attach(model.get_submodule(name), qt)


def _tied_keys(model) -> set[str]:
    keys = set()
    if getattr(model.config, "tie_word_embeddings", False):
        keys.add("lm_head.weight")
    return keys
