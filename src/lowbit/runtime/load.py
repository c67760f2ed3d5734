"""Load a model to run it: a quantized directory (any format lowbit reads: compressed-tensors,
GPTQ, AWQ, bitsandbytes) straight into packed modules, never holding its float weights; a float
directory, GGUF file or the default model as the float model it is."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from lowbit.errors import LowbitError
from lowbit.io.loaded import Loaded

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def runtime_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise LowbitError(f"unknown --dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_for_running(name: str | None, dtype: torch.dtype = torch.float32, allow_pickle: bool = False,
                     exact: bool = False) -> Loaded:
    """Loaded with a model ready to run: quantized Linears packed (Loaded.meta["kernels"]
    counts the modules per kernel), float models in `dtype`. exact: kernels compute in float32
    (slow; the dequantized model's outputs) instead of their fast bf16 path."""
    from lowbit.io import file_checks
    from lowbit.io.load import is_quantized_dir, load_model, read_config
    from lowbit.memory import map_large_allocations

    map_large_allocations()  # unpacking's temporaries go back to the system, not into a fragmented heap
    path = Path(name).expanduser() if name not in (None, "", "default") else None
    if path is not None and path.is_dir() and (path / "config.json").is_file() and is_quantized_dir(read_config(path)):
        with file_checks.reading(path):
            file_checks.check_model_dir(path, dtype.itemsize)
            return load_packed(path, dtype, exact)
    loaded = load_model(name, allow_pickle=allow_pickle, dtype=dtype)
    loaded.meta = {**loaded.meta, "kernels": {}}
    return loaded


def load_packed(path: Path, dtype: torch.dtype = torch.float32, exact: bool = False) -> Loaded:
    from lowbit.compat import init_nonpersistent_buffers
    from lowbit.io.checkpoint import META_FILE, read_quantized
    from lowbit.io.hf_config import load_tokenizer
    from lowbit.memory import release_free_memory
    from lowbit.runtime.float_head import head_in_bf16
    from lowbit.runtime.packed import pack_model

    model, tensors, plain = read_quantized(path, dtype, error=LowbitError)
    kernels: dict[str, int] = {}
    for kernel in pack_model(model, tensors, dtype, exact=exact).values():
        kernels[kernel] = kernels.get(kernel, 0) + 1
    state = {}
    for k in list(plain):
        v = plain.pop(k)
        state[k] = v.to(dtype) if v.is_floating_point() else v
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    del state
    if unexpected:
        raise LowbitError(f"{path}: tensors the model does not have: {unexpected[:3]}: the files do not match config.json")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise LowbitError(f"{path}: weights missing from the checkpoint: {still_meta[:3]}: the files are incomplete")
    if not exact and head_in_bf16(model, dtype):
        kernels["bf16 float head"] = 1
    init_nonpersistent_buffers(model)
    release_free_memory()
    meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).is_file() else {}
    meta["kernels"] = kernels
    return Loaded(model.eval(), load_tokenizer(path), str(path.resolve()), "quantized", {}, meta)
