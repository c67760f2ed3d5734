"""A model whose decoder layers stay on disk until the walk reaches them.

The skeleton is built on the meta device (no memory); tensors outside the decoder layers
(embeddings, final norm, lm_head) are read at once; each decoder layer is read from its
safetensors shard when the walk needs it and dropped after. Peak memory is then those
outer tensors plus one layer, not the whole model.
"""
from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import torch
from safetensors import safe_open

from lowbit.errors import LowbitError
from lowbit.io.loaded import check_finite
from lowbit.io.shards import SAFETENSORS_DTYPES, tensor_bytes

_TORCH_DTYPES = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}

log = logging.getLogger(__name__)


class SafetensorsWeights:
    """Tensor name -> shard file of a model directory, read one tensor at a time."""

    def __init__(self, model_dir: Path):
        self.dir = Path(model_dir)
        self.files: dict[str, Path] = {}
        self._headers: dict[Path, tuple[dict, int]] = {}
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            for key, fname in json.loads(index.read_text())["weight_map"].items():
                self.files[key] = self.dir / fname
        else:
            for f in sorted(self.dir.glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as fh:
                    for key in fh.keys():
                        self.files[key] = f

    def resolve(self, key: str, base_prefix: str) -> str | None:
        """The stored name of model key `key` (some checkpoints omit the base prefix,
        e.g. OPT's "decoder.layers..." for "model.decoder.layers...")."""
        if key in self.files:
            return key
        if base_prefix and key.startswith(base_prefix + "."):
            short = key[len(base_prefix) + 1:]
            if short in self.files:
                return short
        return None

    def _header(self, path: Path) -> tuple[dict, int]:
        """(header, offset of the data) of a shard, parsed once (file_checks validated it)."""
        if path not in self._headers:
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                self._headers[path] = (json.loads(f.read(n)), 8 + n)
        return self._headers[path]

    def get(self, stored: str) -> torch.Tensor:
        """Read one tensor straight into its own memory: safetensors' get_tensor maps the
        file and copies twice (a 0.4 GB embedding costs 1.2 GB at its peak)."""
        path = self.files[stored]
        header, data_start = self._header(path)
        entry = header[stored]
        dtype = _TORCH_DTYPES.get(entry["dtype"])
        if dtype is None:  # a dtype we do not map: the library's reader
            with safe_open(str(path), framework="pt") as fh:
                return fh.get_tensor(stored)
        start, end = entry["data_offsets"]
        t = torch.empty(entry["shape"], dtype=dtype)
        if end > start:
            with open(path, "rb") as f:
                f.seek(data_start + start)
                got = f.readinto(tensor_bytes(t))
            if got != end - start:
                raise LowbitError(f"{path} is truncated in tensor {stored}: re-download or re-export it")
        return t


def _assign(module: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if attr in owner._parameters:
        owner._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[attr] = tensor


class LazyModel:
    """A causal LM skeleton plus the on-disk weights of its decoder layers."""

    def __init__(self, model_dir: Path, config, dtype=torch.float32):
        from transformers import AutoModelForCausalLM

        self.weights = SafetensorsWeights(model_dir)
        self.dtype = dtype
        self.layers_prefix = None  # set by load_for_walk
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        self.base_prefix = getattr(self.model, "base_model_prefix", "")
        self.model.eval()
        # an exact transform of the whole model (a rotation) applied as tensors arrive:
        # model key -> (the stored key it is computed from, function), and per-layer hooks
        self._rewrites: dict[str, tuple[str, object]] = {}
        self._layer_hooks: list = []

    def rewrite(self, key: str, source: str, fn) -> None:
        """Reads of model tensor `key` give fn(stored tensor `source`) from now on."""
        self._rewrites[key] = (source, fn)

    def after_materialize(self, hook) -> None:
        """hook(layer) runs on each decoder layer once its tensors are read."""
        self._layer_hooks.append(hook)

    def tensor(self, full: str, keep_dtype: bool = False) -> torch.Tensor | None:
        """Model tensor `full` read from disk (None if the checkpoint does not hold it), in the
        model's dtype, or with keep_dtype in the checkpoint's (a float16 head stays half the
        size for a reader that converts it a block of rows at a time)."""
        source, fn = self._rewrites.get(full, (full, None))
        stored = self.weights.resolve(source, self.base_prefix)
        if stored is None:
            return None
        t = self.weights.get(stored)
        if t.is_floating_point():
            if not keep_dtype:
                t = t.to(self.dtype)
            check_finite(full, t)
            if fn is not None:
                with torch.no_grad():
                    t = fn(t)
        return t

    def _load_keys(self, module: torch.nn.Module, prefix: str, keys) -> None:
        for key in keys:
            t = self.tensor(f"{prefix}.{key}" if prefix else key)
            if t is not None:
                _assign(module, key, t)

    def _output_weight(self) -> str | None:
        """Name of an untied output projection (lm_head.weight), which the walk never runs."""
        if getattr(self.model.config, "tie_word_embeddings", False):
            return None
        out = self.model.get_output_embeddings()
        if out is None:
            return None
        name = next(n for n, m in self.model.named_modules() if m is out)
        return f"{name}.weight"

    def load_outside(self) -> None:
        """Everything but the decoder layers and an untied lm_head (it stays on disk until
        written: a 49k x 2k float32 head is 0.4 GB); ties lm_head; recomputes rotary buffers."""
        from lowbit.compat import init_nonpersistent_buffers

        layers_prefix = self.layers_prefix
        self.deferred = {self._output_weight()} - {None}
        keys = [k for k in self.model.state_dict()
                if not k.startswith(layers_prefix + ".") and k not in self.deferred]
        self._load_keys(self.model, "", keys)
        if getattr(self.model.config, "tie_word_embeddings", False):
            self.model.tie_weights()
        for key in self.deferred:
            if self.weights.resolve(key, self.base_prefix) is None:
                raise LowbitError(f"{self.weights.dir}: weights missing from the checkpoint: {key} "
                                  "(check that every shard is present)")
        still_meta = [k for k, v in self.model.state_dict().items()
                      if v.is_meta and not k.startswith(layers_prefix + ".") and k not in self.deferred]
        if still_meta:
            raise LowbitError(f"{self.weights.dir}: weights missing from the checkpoint: {still_meta[:3]} "
                              "(check that every shard is present)")
        for name, buf in self.model.named_buffers():
            if buf.is_meta:
                _assign(self.model, name, torch.zeros(buf.shape, dtype=buf.dtype))
        init_nonpersistent_buffers(self.model)

    def materialize(self, layer: torch.nn.Module, prefix: str) -> None:
        """Read one decoder layer's tensors from disk."""
        self._load_keys(layer, prefix, list(layer.state_dict()))
        missing = [k for k, v in layer.state_dict().items() if v.is_meta]
        if missing:
            raise LowbitError(f"{self.weights.dir}: weights missing from the checkpoint: "
                              f"{prefix}.{missing[0]} (check that every shard is present)")
        for hook in self._layer_hooks:
            hook(layer)

    def drop_input_embeddings(self) -> None:
        """After the calibration inputs are captured the embedding table is only needed for
        writing, which reads it from disk again; a tied lm_head goes with it."""
        emb = self.model.get_input_embeddings()
        name = next(n for n, m in self.model.named_modules() if m is emb)
        self.release(emb)
        self.deferred.add(f"{name}.weight")
        if getattr(self.model.config, "tie_word_embeddings", False):
            self.model.tie_weights()

    def load_module(self, name: str) -> None:
        """Read one deferred module (an lm_head the user asked to quantize) back in."""
        module = self.model.get_submodule(name)
        self._load_keys(module, name, list(module.state_dict()))
        self.deferred -= {f"{name}.{k}" for k in module.state_dict()}

    @staticmethod
    def release(layer: torch.nn.Module) -> None:
        """Drop a layer's tensors (back to meta) once it is written."""
        for name, t in list(layer.state_dict(keep_vars=True).items()):
            _assign(layer, name, torch.empty(t.shape, dtype=t.dtype, device="meta"))


def load_for_walk(name: str | None, allow_pickle: bool = False, dtype=torch.float32, outside: bool = True):
    """(Loaded, LazyModel) for a plain safetensors model directory (or the default model);
    anything else (GGUF, quantized dir, hub id, pickle) is loaded whole: (Loaded, None).
    outside=False: the tensors outside the decoder layers wait for lazy.load_outside() (a
    caller that tokenizes first does not hold the tokenizer's working memory and a 0.4 GB
    embedding table at once)."""
    from lowbit.arch import arch_for
    from lowbit.io import file_checks
    from lowbit.io.default_model import default_model_dir
    from lowbit.io.hf_config import load_config, load_tokenizer
    from lowbit.io.load import Loaded, is_quantized_dir, load_model, read_config

    path = default_model_dir() if name in (None, "", "default") else Path(name).expanduser()
    if not (path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))):
        return load_model(name, allow_pickle, dtype), None
    raw = read_config(path)
    if is_quantized_dir(raw):
        return load_model(name, allow_pickle, dtype), None
    with file_checks.reading(path):  # hostile files: bounds-check first, then one-line errors
        file_checks.check_model_dir(path, dtype.itemsize, layer_by_layer=True)
    try:
        config = load_config(path, raw)
        lazy = LazyModel(path, config, dtype)
        arch = arch_for(lazy.model)
    except LowbitError:
        raise
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LowbitError(f"cannot load {path}: {first[:300]} (check that the files are complete)") from None
    lazy.layers_prefix = arch.layers
    if outside:
        lazy.load_outside()
    return Loaded(lazy.model, load_tokenizer(path), str(path.resolve()), "hf"), lazy
