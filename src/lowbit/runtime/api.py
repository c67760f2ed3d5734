"""The runtime's Python API: lowbit.run(model) -> a Loaded ready to generate with packed
weights; lowbit.generate(model, prompt, ...) -> text; lowbit.bench(model) -> the speed table."""
from __future__ import annotations

from lowbit.io.loaded import Loaded
from lowbit.runtime.generate import Sampling
from lowbit.runtime.generate import generate as _generate
from lowbit.runtime.load import load_for_running, runtime_dtype
from lowbit.runtime.speed import bench  # noqa: F401  (re-exported)


def run(model: str | None = None, dtype: str = "float32") -> Loaded:
    """MODEL loaded to run: a quantized directory's Linears packed on real kernels."""
    return load_for_running(model, runtime_dtype(dtype))


def generate(model: str | Loaded | None, prompt, max_new_tokens: int = 128, *, chat: bool = False,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
             on_text=None, dtype: str = "float32") -> str:
    """The model's continuation of `prompt` (with chat=True, its answer to a user message or a
    list of {"role", "content"} messages); on_text(piece) streams it."""
    loaded = model if isinstance(model, Loaded) else run(model, dtype)
    return _generate(loaded, prompt, max_new_tokens, chat, Sampling(temperature, top_p, top_k, seed), on_text)
