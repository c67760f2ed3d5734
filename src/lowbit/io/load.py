"""Load a model from what a user names: nothing (the default model), a Hugging Face
directory of safetensors, a .gguf file, a directory lowbit wrote, or a hub id."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from lowbit.errors import LowbitError
from lowbit.io import file_checks
from lowbit.io.loaded import Loaded, check_finite  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def read_config(path: Path) -> dict:
    from lowbit.io.hf_config import read_raw_config
    return read_raw_config(path)


def is_quantized_dir(cfg: dict) -> bool:
    from lowbit.io.formats import detect_format
    return detect_format(cfg.get("quantization_config")) is not None


def load_model(name: str | None = None, allow_pickle: bool = False, dtype=torch.float32) -> Loaded:
    from lowbit.io.default_model import default_model_dir

    if name in (None, "", "default"):
        path = default_model_dir()
        with file_checks.reading(path):
            return _load_hf_dir(path, allow_pickle, dtype)
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise LowbitError(f"GGUF file {path} does not exist: check the path")
        with file_checks.reading(path):  # hostile files: bounds-check first, then one-line errors
            file_checks.check_model_file(path, dtype.itemsize)
            from lowbit.io.gguf_reader import gguf_facts, read_gguf
            model, tok = read_gguf(path, dtype)
            facts = gguf_facts(path)
        return Loaded(model, tok, str(path.resolve()), "gguf", meta=facts)
    if path.is_dir():
        with file_checks.reading(path):
            return _load_hf_dir(path, allow_pickle, dtype)
    if path.exists():
        raise LowbitError(f"{path} is not a model: give a model directory (with config.json) or a .gguf file")
    if name.count("/") == 1 and not name.startswith((".", "/")) and not path.parent.exists():
        return _load_hub(name, allow_pickle, dtype)
    raise LowbitError(f"model path {path} does not exist: check the path, or give a hub id like org/name")


def _load_hf_dir(path: Path, allow_pickle: bool, dtype) -> Loaded:
    from transformers import AutoModelForCausalLM

    from lowbit.io.hf_config import load_config, load_tokenizer

    if not (path / "config.json").is_file():
        raise LowbitError(f"{path} is not a model directory (no config.json): "
                          "give a Hugging Face model directory or a .gguf file")
    file_checks.check_model_dir(path, dtype.itemsize)
    cfg = read_config(path)
    if is_quantized_dir(cfg):
        from lowbit.io.checkpoint import load_quantized
        return load_quantized(path, dtype)
    has_safetensors = any(path.glob("*.safetensors"))
    if not has_safetensors:
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles and not allow_pickle:
            raise LowbitError(f"{path} holds only pickle weights ({pickles[0]}), which can run code "
                              "when loaded: convert them to safetensors or pass --allow-pickle")
        if not pickles:
            raise LowbitError(f"{path} has config.json but no weights (*.safetensors): "
                              "copy the weight files into it")
    try:
        config = load_config(path, cfg)
        model = AutoModelForCausalLM.from_pretrained(
            str(path), config=config, dtype=dtype, use_safetensors=has_safetensors, trust_remote_code=False)
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LowbitError(f"cannot load {path}: {first[:300]} (check that the files are complete)") from None
    return Loaded(model.eval(), load_tokenizer(path), str(path.resolve()), "hf")


def _load_hub(name: str, allow_pickle: bool, dtype) -> Loaded:
    """A hub id (needs network, or a local hub cache). Real code, not exercised offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, use_safetensors=not allow_pickle,
                                                     trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as e:
        raise LowbitError(f"cannot fetch {name!r} from the hub ({str(e).splitlines()[0][:200]}): "
                          "check the id and the network, or give a local path") from None
    return Loaded(model.eval(), tokenizer, name, "hub")
