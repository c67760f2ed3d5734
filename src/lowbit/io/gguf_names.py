"""Hugging Face <-> GGUF: architecture names, tensor names, and the Q/K row order.

llama.cpp's converter reorders the rows of q_proj/k_proj for Llama-family models
(HF keeps each head's rotary halves apart, ggml's RoPE wants them interleaved);
Qwen2/Qwen3 are stored in HF order. Quantization is row-wise, so the same row
permutation applies to packed GGML blocks (uint8 rows) as to float rows.
"""
from __future__ import annotations

import re

import gguf
import numpy as np

from lowbit.errors import LowbitError

# HF model_type -> GGUF general.architecture (Mistral is written as llama, as llama.cpp's converter does)
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
PERMUTED_QK = {"llama"}  # GGUF architectures whose attn_q/attn_k rows are interleaved
_LAYER = re.compile(r"^blk\.(\d+)\.")
_SKIP = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved; llama.cpp recomputes them


def gguf_arch(model_type: str | None) -> str:
    if model_type not in GGUF_ARCH:
        raise LowbitError(f"architecture {model_type!r} cannot be written as GGUF yet: "
                          f"lowbit writes {', '.join(sorted(GGUF_ARCH))}")
    return GGUF_ARCH[model_type]


def layer_of(gguf_name: str) -> int | None:
    m = _LAYER.match(gguf_name)
    return int(m.group(1)) if m else None


def gguf_names(model_type: str, hf_names, n_layer: int) -> dict[str, str]:
    """{hf_name: gguf_name} for every HF tensor name that has a GGUF name; unknown names raise."""
    arch = gguf_arch(model_type)
    tmap = gguf.get_tensor_name_map(_ARCH_ENUM[arch], n_layer)
    out = {}
    for name in hf_names:
        if name.endswith(_SKIP):
            continue
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise LowbitError(f"tensor {name} has no GGUF name for architecture {arch}: "
                              "this model variant is not supported by the GGUF writer yet")
        out[name] = new
    return out


def permute_qk(rows: np.ndarray, n_head: int) -> np.ndarray:
    """HF (head, half, i) row order -> GGUF (head, i, half) row order; any trailing shape."""
    r = rows.shape[0]
    return rows.reshape(n_head, 2, r // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def unpermute_qk(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of permute_qk."""
    r = rows.shape[0]
    return rows.reshape(n_head, r // n_head // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def qk_heads(arch: str, gguf_name: str, n_head: int, n_head_kv: int) -> int | None:
    """The head count that reorders this tensor's rows, or None when it stays as is."""
    if arch not in PERMUTED_QK:
        return None
    if gguf_name.endswith((".attn_q.weight", ".attn_q.bias")):
        return n_head
    if gguf_name.endswith((".attn_k.weight", ".attn_k.bias")):
        return n_head_kv
    return None


_ARCH_ENUM = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items() if name in set(GGUF_ARCH.values())}
