"""Which GGML type each tensor gets in a llama.cpp file type ("Q4_K_M" ...).

Our implementation of the rules of llama.cpp's quantizer (src/llama-quant.cpp,
as vendored in llama-cpp-python 0.3.36, llama.cpp of 2026-10), for dense
(non-MoE) models and the file types below:

- the output matrix, and the token embeddings when they are tied to it, get Q6_K
  (Q8_0 when the row does not split into blocks of the default type);
- attn_v and ffn_down get more bits in some layers ("use_more_bits": the first and
  last eighth of the layers and every third layer between);
- attn_output gets more bits in Q2_K / Q3_K_M / Q3_K_L;
- a row whose length is not a multiple of the type's block falls back to a
  32-block type (FALLBACK), and to F16 when even 32 does not divide it.

Facts about versions: llama.cpp from early 2024 to 2025 sent Q2_K/Q3_K rows of
odd length to IQ4_NL; the vendored 2026 version sends them to Q4_0 again, which
is also what our block quantizers can write. On the default model (576-wide rows)
every 256-block tensor except ffn_down (1536-wide rows) falls back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, LlamaFileType as F

from lowbit.errors import LowbitError
from lowbit.io.gguf_names import gguf_arch, gguf_names, layer_of

# file type name -> (general.file_type, default tensor type)
FILE_TYPES: dict[str, tuple[F, T]] = {
    "F32": (F.ALL_F32, T.F32), "F16": (F.MOSTLY_F16, T.F16), "BF16": (F.MOSTLY_BF16, T.BF16),
    "Q8_0": (F.MOSTLY_Q8_0, T.Q8_0), "Q4_0": (F.MOSTLY_Q4_0, T.Q4_0), "Q4_1": (F.MOSTLY_Q4_1, T.Q4_1),
    "Q5_0": (F.MOSTLY_Q5_0, T.Q5_0), "Q5_1": (F.MOSTLY_Q5_1, T.Q5_1), "Q2_K": (F.MOSTLY_Q2_K, T.Q2_K),
    "Q3_K_S": (F.MOSTLY_Q3_K_S, T.Q3_K), "Q3_K_M": (F.MOSTLY_Q3_K_M, T.Q3_K),
    "Q3_K_L": (F.MOSTLY_Q3_K_L, T.Q3_K), "Q4_K_S": (F.MOSTLY_Q4_K_S, T.Q4_K),
    "Q4_K_M": (F.MOSTLY_Q4_K_M, T.Q4_K), "Q5_K_S": (F.MOSTLY_Q5_K_S, T.Q5_K),
    "Q5_K_M": (F.MOSTLY_Q5_K_M, T.Q5_K), "Q6_K": (F.MOSTLY_Q6_K, T.Q6_K),
    # llama.cpp names this file type for MoE models (experts in MXFP4, the rest Q8_0); on a dense
    # model lowbit puts every Linear in MXFP4 and keeps the output matrix in Q8_0
    "MXFP4": (F.MOSTLY_MXFP4_MOE, T.MXFP4),
}
FLOAT_TYPES = (T.F32, T.F16, T.BF16)
# 256-block type -> 32-block type for rows that 256 does not divide
FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0, T.MXFP4: T.Q8_0}


@dataclass(frozen=True)
class MixModel:
    """What the rules need to know about the model besides the tensor names."""
    n_layer: int
    n_gqa: int = 1  # attention heads per KV head
    tied: bool = True  # no output.weight: token_embd is also the output matrix
    is_70b: bool = False
    has_importance: bool = False  # an importance matrix is used (changes Q4_0/Q5_0 ffn_down)


def parse_file_type(name: str) -> tuple[F, T]:
    key = name.upper()
    if key not in FILE_TYPES:
        raise LowbitError(f"GGUF file type {name!r} is not supported: use one of {', '.join(FILE_TYPES)}")
    return FILE_TYPES[key]


def block_size(t: T) -> int:
    return GGML_QUANT_SIZES[t][0]


def row_bytes(t: T, cols: int) -> int:
    blk, size = GGML_QUANT_SIZES[t]
    return cols // blk * size


def quantizable(gguf_name: str, shape) -> bool:
    """2-D weights other than norms; everything else stays F32."""
    return len(shape) >= 2 and gguf_name.endswith("weight") and "_norm.weight" not in gguf_name


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key in ("attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight"):
        if key in name:
            return "attn_v"  # llama.cpp treats fused qkv like attn_v
    for key, cat in (("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                     ("attn_output.weight", "attn_output"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _mixed_type(name: str, cols: int, ftype: str, base: T, m: MixModel) -> T:
    """The type the file type's mix asks for, before the row-length fallback."""
    cat, i, n = _category(name), layer_of(name), m.n_layer
    if cat == "output" or (cat == "token_embd" and m.tied):
        if cols % block_size(base) or base == T.MXFP4:
            return T.Q8_0
        return base if base == T.Q8_0 else T.Q6_K
    if cat == "attn_v":
        t = base
        if ftype == "Q2_K":
            t = T.Q4_K if m.n_gqa >= 4 else T.Q3_K
        elif ftype == "Q3_K_M":
            t = T.Q5_K if i < 2 else T.Q4_K
        elif ftype == "Q3_K_L":
            t = T.Q5_K
        elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            t = T.Q6_K
        elif ftype == "Q4_K_S" and i < 4:
            t = T.Q5_K
        if m.is_70b and t in (T.Q3_K, T.Q4_K):
            t = T.Q5_K  # 8 heads share attn_v: more bits cost little
        return t
    if cat == "ffn_down":
        if ftype == "Q2_K":
            return T.Q3_K
        if ftype == "Q3_K_M":
            return T.Q5_K if i < n // 16 else T.Q4_K
        if ftype == "Q3_K_L":
            return T.Q5_K
        if ftype in ("Q4_K_M", "Q5_K_M"):
            return T.Q6_K if use_more_bits(i, n) else base
        if ftype == "Q4_K_S":
            return T.Q5_K if i < n // 8 else base
        if ftype in ("Q4_0", "Q5_0") and m.has_importance and i < n // 8:
            return T.Q4_1 if ftype == "Q4_0" else T.Q5_1
        return base
    if cat == "attn_output":
        return {"Q2_K": T.Q3_K, "Q3_K_M": T.Q4_K, "Q3_K_L": T.Q5_K}.get(ftype, base)
    return base


def fallback(t: T, cols: int) -> T:
    if cols % block_size(t) == 0:
        return t
    t2 = FALLBACK.get(t, t)
    return t2 if cols % block_size(t2) == 0 else T.F16


def tensor_type(gguf_name: str, shape, ftype: str, m: MixModel) -> T:
    """The GGML type of one tensor (shape in HF order: rows, cols)."""
    _, base = parse_file_type(ftype)
    if not quantizable(gguf_name, shape):
        return T.F32
    if base in FLOAT_TYPES:
        return base
    cols = int(shape[-1])
    return fallback(_mixed_type(gguf_name, cols, ftype.upper(), base, m), cols)


def _from_model(model: torch.nn.Module) -> tuple[dict[str, tuple], object]:
    shapes = {}
    seen = {}
    for name, t in model.state_dict(keep_vars=True).items():
        # tied tensors are one object; on the meta device (a layer-by-layer model) that is all
        # that tells them apart, since every meta tensor has data pointer 0
        key = id(t) if t.is_meta else (t.data_ptr(), tuple(t.shape))
        if t.numel() and key in seen:  # tied lm_head: the file holds token_embd only
            continue
        seen[key] = name
        shapes[name] = tuple(t.shape)
    return shapes, model.config


def _cfg(config, key, default=None):
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def plan_types(source, file_type: str = "Q4_K_M", config=None,
               has_importance: bool = False) -> dict[str, T]:
    """{hf_tensor_name: GGMLQuantizationType} for every tensor the GGUF file will hold.

    source: an HF model, or {hf_name: shape} (then `config`, an HF config or dict, gives
    model_type / num_attention_heads / num_key_value_heads / num_hidden_layers; a tied
    lm_head is simply left out of the dict)."""
    parse_file_type(file_type)
    if isinstance(source, torch.nn.Module):
        shapes, config = _from_model(source)
    else:
        shapes = {k: tuple(v) for k, v in dict(source).items()}
    model_type = _cfg(config, "model_type", "llama")
    n_layer = _cfg(config, "num_hidden_layers")
    if n_layer is None:
        n_layer = 1 + max((int(k.split(".")[2]) for k in shapes if k.startswith("model.layers.")), default=-1)
    n_head = _cfg(config, "num_attention_heads", 1)
    n_kv = _cfg(config, "num_key_value_heads", None) or n_head
    names = gguf_names(model_type, shapes, n_layer)
    arch = gguf_arch(model_type)
    m = MixModel(n_layer=n_layer, n_gqa=n_head // n_kv, tied="output.weight" not in names.values(),
                 is_70b=(arch in ("llama", "qwen2") and n_layer == 80 and (arch == "qwen2" or n_kv != n_head)),
                 has_importance=has_importance)
    return {hf: tensor_type(g, shapes[hf], file_type, m) for hf, g in names.items()}
