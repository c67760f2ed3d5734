"""Valid tiny inputs for bench/fuzz_readers.py: a float safetensors directory, a
compressed-tensors directory written by lowbit, and a GGUF written by gguf's writer
(F32 tensors, Q8_0 MLP weights, a byte-level BPE tokenizer of 300 tokens)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
VOCAB = 300
LAYERS, HIDDEN, HEADS, KV_HEADS = 2, 72, 4, 2
GGUF_NAMES = [("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
              ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
              ("mlp.down_proj", "ffn_down"), ("input_layernorm", "attn_norm"),
              ("post_attention_layernorm", "ffn_norm")]


def _rope_permute(x: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> GGUF rotary layout (transformers undoes it when it reads q/k)."""
    return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def write_gguf(model, path: Path) -> None:
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny-fuzz")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(128)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    merges = ["Ġ t", "h e", "Ġt he", "i n", "a n"]
    tokens = list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in merges]
    tokens += [f"<x{i}>" for i in range(VOCAB - len(tokens))]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * VOCAB)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    for i in range(LAYERS):
        names.update({f"model.layers.{i}.{a}.weight": f"blk.{i}.{b}.weight" for a, b in GGUF_NAMES})
    for hf, g in names.items():
        x = sd[hf]
        if ".attn_q." in g or ".attn_k." in g:
            x = _rope_permute(x, HEADS if ".attn_q." in g else KV_HEADS)
        if ".ffn_" in g and x.ndim == 2 and x.shape[1] % 32 == 0:
            w.add_tensor(g, quantize(x, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(g, x.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def build(root: Path) -> dict[str, Path]:
    import lowbit
    from lowbit.io.load import load_model
    from tiny import tiny_model

    root.mkdir(parents=True, exist_ok=True)
    model = tiny_model("llama", vocab=VOCAB)
    gguf = root / "tiny.gguf"
    write_gguf(model, gguf)
    hf = root / "hf"
    model.save_pretrained(hf)
    load_model(str(gguf)).tokenizer.save_pretrained(hf)
    (hf / "tokenizer.model").unlink(missing_ok=True)  # a copy of the GGUF; tokenizer.json suffices
    quant = root / "quant"
    lowbit.quantize(str(hf), "w4g32", quant, overwrite=True)
    return {"hf": hf, "quant": quant, "gguf": gguf}
