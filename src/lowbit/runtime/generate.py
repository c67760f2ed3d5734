"""Text generation on a loaded model (packed or float), through transformers' generate: tokens
streamed as they are produced, greedy or sampled, the tokenizer's chat template, a static KV
cache (allocated once for the whole generation, so decoding does not reallocate)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.errors import LowbitError


@dataclass(frozen=True)
class Sampling:
    """Greedy when temperature is 0."""
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise LowbitError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise LowbitError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise LowbitError(f"--top-k must be >= 0 (0: off), got {self.top_k}")

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k or None}


def prompt_ids(tokenizer, messages_or_text, chat: bool) -> torch.Tensor:
    """(1, n) token ids: the text as is, or a chat (list of {"role", "content"}, or one user
    message) through the tokenizer's chat template with the assistant's turn opened."""
    if tokenizer is None:
        raise LowbitError("the model has no tokenizer files: copy them into its directory")
    if chat:
        if getattr(tokenizer, "chat_template", None) is None:
            raise LowbitError("the tokenizer has no chat template: drop --chat, or use a chat model")
        messages = messages_or_text if isinstance(messages_or_text, list) else \
            [{"role": "user", "content": messages_or_text}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        return ids
    return tokenizer(messages_or_text, return_tensors="pt")["input_ids"]


class _CallbackStreamer:
    """transformers' streamer protocol (put / end): new text to on_text as tokens arrive,
    decoded from the start of the answer each time so multi-token characters come out whole."""

    def __init__(self, tokenizer, on_text):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.printed = 0
        self.prompt_seen = False

    def put(self, value):
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.ids.extend(value.reshape(-1).tolist())
        self._emit(final=False)

    def end(self):
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):  # half a character: wait for the rest
            return
        if len(text) > self.printed:
            self.on_text(text[self.printed:])
            self.printed = len(text)


def compile_config():
    """torch.compile of the decode step (inductor, static shapes), which transformers applies on
    CPUs only when asked: on the default model W4 g128 decodes 1.37x faster with it (bench/runtime.py:
    58.8 against 42.8 tokens/s), after about a minute
    of compiling on first use (cached on disk afterwards), so it is an option, not the default."""
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=False, dynamic=False, mode="default")
    config._compile_all_devices = True
    return config


def generate_ids(model, input_ids: torch.Tensor, max_new_tokens: int, sampling: Sampling = Sampling(),
                 streamer=None, min_new_tokens: int | None = None, static_cache: bool = True,
                 eos: bool = True, compile: bool = False) -> torch.Tensor:
    """The new token ids (1, k), k <= max_new_tokens (generation stops at EOS unless eos=False).
    compile: torch.compile the decode step (static cache only)."""
    if max_new_tokens < 1:
        raise LowbitError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    kw = dict(max_new_tokens=max_new_tokens, streamer=streamer, **sampling.generate_kwargs())
    if min_new_tokens is not None:
        kw["min_new_tokens"] = min_new_tokens
    if static_cache:
        kw["cache_implementation"] = "static"
        if compile:
            kw["compile_config"] = compile_config()
    if not eos:
        kw["eos_token_id"] = None
    config = model.generation_config
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    if isinstance(pad, list):
        pad = pad[0]
    if sampling.temperature > 0:
        torch.manual_seed(sampling.seed)
    with torch.inference_mode():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), pad_token_id=pad, **kw)
    return out[:, input_ids.shape[1]:]


def generate(loaded, prompt, max_new_tokens: int = 128, chat: bool = False, sampling: Sampling = Sampling(),
             on_text=None, compile: bool = False) -> str:
    """The answer to `prompt` (text, or a list of chat messages with chat=True); on_text(piece)
    gets the text as it is produced."""
    ids = prompt_ids(loaded.tokenizer, prompt, chat)
    streamer = _CallbackStreamer(loaded.tokenizer, on_text) if on_text is not None else None
    new = generate_ids(loaded.model, ids, max_new_tokens, sampling, streamer, compile=compile)
    return loaded.tokenizer.decode(new[0], skip_special_tokens=True)
