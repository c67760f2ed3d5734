"""What the header checks of every file kind share: the one-line failure and the sanity of the
hyperparameters that size allocations (io/file_checks.py for safetensors and config.json,
io/gguf_check.py for GGUF)."""
from __future__ import annotations

from lowbit.errors import LowbitError

# hyperparameters that size allocations: null (library default) or a positive int below the cap.
# Caps are far above any released model (hidden 16384, vocab 256k, 1M context).
SIZE_LIMITS = {
    "hidden_size": 2**17, "n_embd": 2**17, "d_model": 2**17, "word_embed_proj_dim": 2**17,
    "intermediate_size": 2**20, "ffn_dim": 2**20, "n_inner": 2**20, "moe_intermediate_size": 2**20,
    "num_hidden_layers": 2**12, "n_layer": 2**12, "num_attention_heads": 2**12, "n_head": 2**12,
    "num_key_value_heads": 2**12, "head_dim": 2**14, "vocab_size": 2**23,
    "max_position_embeddings": 2**27, "n_positions": 2**27, "num_local_experts": 2**12, "num_experts": 2**12,
}


def fail(path, problem: str, fix: str = "re-download or re-export it"):
    raise LowbitError(f"{path} {problem}: {fix}")


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_sizes(path, cfg: dict, names: dict | None = None) -> None:
    """Sizes in a config dict (or GGUF keys, shown by `names`) are null or sane positive ints."""
    for key, cap in SIZE_LIMITS.items():
        v = cfg.get(key)
        values = v if isinstance(v, list) and key == "num_key_value_heads" else [v]  # GGUF: per layer
        for x in values:
            if x is None:
                continue
            shown = (names or {}).get(key, key)
            if not is_int(x) or not 0 < x <= cap:
                fail(path, f"has {shown} = {str(x)[:30]}, not an integer from 1 to {cap}",
                      "the file is damaged or crafted; repair or re-download the model")


def config_params(cfg: dict) -> int:
    """A lower bound on the parameters a model built from this (resolved) config holds."""
    def get(*keys):
        for k in keys:
            v = cfg.get(k)
            if is_int(v) and v > 0:
                return v
        return 0
    h, n_layers, vocab = get("hidden_size", "n_embd", "d_model"), get("num_hidden_layers", "n_layer"), get("vocab_size")
    heads = get("num_attention_heads", "n_head")
    kv = get("num_key_value_heads") or heads
    hd = get("head_dim") or (h // heads if heads else 0)
    inter = get("intermediate_size", "ffn_dim", "n_inner")
    learned_pos = cfg.get("model_type") in ("opt", "gpt2")
    mlp = (2 if learned_pos else 3) * h * inter
    attn = 2 * h * heads * hd + 2 * h * kv * hd
    emb = vocab * h * (1 if cfg.get("tie_word_embeddings", True) else 2)
    pos = get("max_position_embeddings", "n_positions") * h if learned_pos else 0
    return emb + pos + n_layers * (attn + mlp)
