"""Tiny random causal LMs built in memory, one per supported architecture family.
Widths are chosen so that groups of 32 do not divide every row (72 = 2.25 x 32)."""
import torch
from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig, OPTConfig,
                          Qwen2Config)

VOCAB = 49152  # the default model's tokenizer, so CLI tests can tokenize real text


def tiny_config(family: str, vocab: int = 512, **extra):
    common = dict(vocab_size=vocab, hidden_size=72, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, **extra)
    if family == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if family == "opt":
        return OPTConfig(vocab_size=vocab, hidden_size=72, ffn_dim=128, num_hidden_layers=2,
                         num_attention_heads=4, word_embed_proj_dim=72, max_position_embeddings=1024)
    raise ValueError(family)


def tiny_model(family: str = "llama", vocab: int = 512, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab), dtype=torch.float32)
    for p in model.parameters():  # spread the weights so that quantization error is visible
        p.data.normal_(0, 0.05)
    model.tie_weights()
    return model.eval()
