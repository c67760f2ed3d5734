"""The shapes a memory plan is computed from: every tensor of the model, from its config alone.

A model directory, a quantized directory lowbit wrote, a GGUF file or a hub id (when online) give a
config; the model is then built on the meta device, so its real tensor names and shapes are known
without reading a weight. `--params N` with no model builds a Llama of that size: given dimensions
win, missing ones come from the nearest of a few published Llama shapes, and the plan says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from lowbit.errors import LowbitError

# published Llama-family shapes (params, layers, hidden, intermediate, heads, kv heads, vocab):
# what `--params N` falls back on for dimensions it is not given
KNOWN_SHAPES = (
    (1.24e9, 16, 2048, 8192, 32, 8, 128256),    # Llama-3.2-1B
    (3.21e9, 28, 3072, 8192, 24, 8, 128256),    # Llama-3.2-3B
    (6.74e9, 32, 4096, 11008, 32, 32, 32000),   # Llama-2-7B
    (8.03e9, 32, 4096, 14336, 32, 8, 128256),   # Llama-3-8B
    (13.0e9, 40, 5120, 13824, 40, 40, 32000),   # Llama-2-13B
    (70.6e9, 80, 8192, 28672, 64, 8, 128256),   # Llama-3-70B
)


@dataclass
class ModelShapes:
    """What a plan needs to know of a model. tensors: every stored tensor (name -> shape, a tied
    head counted once); linears: the decoder layers' Linear weights (what methods quantize)."""
    source: str
    params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_ctx: int
    tied: bool
    model_type: str = "llama"
    tensors: dict[str, tuple] = field(default_factory=dict)
    linears: dict[str, tuple] = field(default_factory=dict)
    config: object = None
    guessed: list[str] = field(default_factory=list)  # dimensions not given, taken from KNOWN_SHAPES

    @property
    def exact_shapes(self) -> bool:
        return not self.guessed


def _cfg(config, key, default=None):
    v = getattr(config, key, None)
    return default if v is None else v


def from_config(config, source: str, params: int | None = None, guessed: list[str] | None = None) -> ModelShapes:
    from transformers import AutoModelForCausalLM

    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config  # the float skeleton: shapes as the methods see them
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tensors, seen = {}, set()
    for name, p in model.state_dict(keep_vars=True).items():
        if id(p) in seen:  # a tied head is the embedding
            continue
        seen.add(id(p))
        tensors[name] = tuple(p.shape)
    linears = {f"{n}.weight": tuple(m.weight.shape) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}."}
    heads = _cfg(config, "num_attention_heads", 1)
    hidden = _cfg(config, "hidden_size")
    counted = sum(numel(s) for s in tensors.values())
    return ModelShapes(
        source=source, params=int(params or counted), layers=_cfg(config, "num_hidden_layers"), hidden=hidden,
        heads=heads, kv_heads=_cfg(config, "num_key_value_heads", heads),
        head_dim=_cfg(config, "head_dim", hidden // heads),
        intermediate=_cfg(config, "intermediate_size", _cfg(config, "ffn_dim", 4 * hidden)),
        vocab=_cfg(config, "vocab_size"), max_ctx=_cfg(config, "max_position_embeddings", 2048),
        tied=bool(_cfg(config, "tie_word_embeddings", False)), model_type=config.model_type,
        tensors=tensors, linears=linears, config=config, guessed=list(guessed or []))


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def from_params(params: float, layers: int | None = None, hidden: int | None = None,
                intermediate: int | None = None, heads: int | None = None, kv_heads: int | None = None,
                vocab: int | None = None, max_ctx: int = 131072) -> ModelShapes:
    """A Llama of `params` parameters; totals use `params` itself (7e9 is 28 GB in fp32 whatever
    the guessed shape counts), the shapes only place the bytes on tensors and size the KV cache."""
    from transformers import LlamaConfig

    if params <= 0:
        raise LowbitError(f"--params {params:g} must be positive: give the parameter count, e.g. 7e9 or 7B")
    near = min(KNOWN_SHAPES, key=lambda s: abs(s[0] - params))
    given = dict(layers=layers, hidden=hidden, intermediate=intermediate, heads=heads, kv_heads=kv_heads, vocab=vocab)
    dims = dict(zip(("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab"), near[1:]))
    guessed = [k for k, v in given.items() if v is None]
    dims.update({k: v for k, v in given.items() if v is not None})
    if dims["hidden"] % dims["heads"] or dims["heads"] % dims["kv_heads"]:
        raise LowbitError(f"--hidden {dims['hidden']}, --heads {dims['heads']}, --kv-heads {dims['kv_heads']} do not "
                          "divide: hidden must be a multiple of heads, heads a multiple of kv heads")
    config = LlamaConfig(vocab_size=dims["vocab"], hidden_size=dims["hidden"], intermediate_size=dims["intermediate"],
                         num_hidden_layers=dims["layers"], num_attention_heads=dims["heads"],
                         num_key_value_heads=dims["kv_heads"], max_position_embeddings=max_ctx,
                         tie_word_embeddings=False)
    return from_config(config, f"--params {params:g}", params=int(params), guessed=guessed)


def parse_count(text: str) -> float:
    """'7B', '7e9', '135M', '70000000000' -> a number."""
    t = str(text).strip().upper().replace("_", "")
    mult = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
    try:
        return float(t[:-1]) * mult[t[-1]] if t and t[-1] in mult else float(t)
    except ValueError:
        raise LowbitError(f"--params {text!r} is not a number: write it like 7e9, 7B or 135M") from None


def model_shapes(name: str | None) -> ModelShapes:
    """Shapes of a model directory (float or quantized), a .gguf file, a hub id, or the default model."""
    from lowbit.io.default_model import default_model_dir

    if name in (None, "", "default"):
        return from_config(_dir_config(default_model_dir()), "default")
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise LowbitError(f"{path} does not exist: give a .gguf file that exists")
        from lowbit.io.gguf_reader import gguf_config, open_gguf
        return from_config(gguf_config(open_gguf(path), path), str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LowbitError(f"{path} has no config.json: give a Hugging Face model directory, a .gguf file or --params")
        return from_config(_dir_config(path), str(path))
    if path.exists() or name.startswith((".", "/", "~")):
        raise LowbitError(f"{name} is neither a model directory nor a .gguf file: give one, or --params N")
    from transformers import AutoConfig
    try:  # a hub id: only its config is fetched
        return from_config(AutoConfig.from_pretrained(name), name)
    except OSError:
        raise LowbitError(f"{name}: no such directory or file, and the hub has no config for it (offline?): "
                          "give a local model or --params N") from None


def _dir_config(path: Path):
    from lowbit.io.hf_config import load_config
    return load_config(path)
