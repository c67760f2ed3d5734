"""Tiny random causal LMs built in memory, one per supported architecture family.
Widths are chosen so that groups of 32 do not divide every row (72 = 2.25 x 32)."""
import torch

from lowbit.arch import arch_for, decoder_layers
from lowbit.transforms.smooth import scale_pair
from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig, OPTConfig,
                          Qwen2Config, Qwen3Config)

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


def tiny_llm(family="llama", hidden=256, vocab=512, seed=0):
    """Widths that 256 divides, so k-quant blocks apply (tests/tiny.py's 72 would fall back to F16)."""
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    cfg = {"llama": lambda: LlamaConfig(**common, tie_word_embeddings=True),
           "mistral": lambda: MistralConfig(**common, sliding_window=None, tie_word_embeddings=False),
           "qwen2": lambda: Qwen2Config(**common, tie_word_embeddings=False),
           "qwen3": lambda: Qwen3Config(**common, head_dim=64, tie_word_embeddings=True)}[family]()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    model.tie_weights()
    return model.eval()


LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def plant_outliers(model, factor=40.0, channels=(3, 40, 77, 150)):
    """Same float function, but a few input channels of q/k/v, gate/up and down become
    `factor` times larger than their neighbours (the weights' columns smaller)."""
    with torch.no_grad():
        for layer in decoder_layers(model, arch_for(model)):
            s = torch.ones(model.config.hidden_size)
            s[list(channels)] = factor
            scale_pair(layer, "input_layernorm", LINEARS[:3], 1 / s)
            scale_pair(layer, "post_attention_layernorm", LINEARS[4:6], 1 / s)
            s2 = torch.ones(model.config.intermediate_size)
            s2[[c + 100 for c in channels]] = factor
            scale_pair(layer, "mlp.up_proj", LINEARS[6:], 1 / s2)
    return model


def slow_model(path, tokenizer) -> None:
    """Saves a Llama of eight layers wide enough that each takes a moment, so that a kill or a
    Ctrl-C lands mid-run."""
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
