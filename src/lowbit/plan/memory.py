"""KV cache, activations and training memory, from a model's shapes.

KV cache = 2 (K and V) x layers x kv_heads x head_dim x context x batch x bytes per element.
Llama-3-8B (32 layers, 8 KV heads of 128) at 8192 tokens in fp16: 2 x 32 x 8 x 128 x 8192 x 2 =
1 GiB (grouped-query attention: 8 KV heads, not 32; the often-quoted 4-8 GB counts 32).
Quantized caches store blocks as llama.cpp does: q8_0 34 bytes per 32 values, q4_0 18 per 32.

Activations at inference: the working set of one decoder layer for a prefill of `context` tokens
(residual and normed hidden, q / k / v, attention output, MLP gate / up / product) in 16-bit, with
a fused attention kernel (no context x context matrix), plus the last position's fp32 logits.

Training (per parameter, mixed precision as in ZeRO, Rajbhandari et al. 2020): fp32 weights,
gradients and Adam's two moments = 16 bytes; bf16 weights and gradients with fp32 master weights
and moments = 2 + 2 + 12 = 16 bytes too; LoRA: the frozen base in bf16 plus 16 bytes per adapter
parameter; QLoRA: the base in NF4 with double quantization plus the same adapters. Training
activations with gradient checkpointing: each layer's input kept (2 bytes x tokens x hidden per
layer) plus one layer recomputed in full (34 x tokens x hidden bytes, Korthikanti et al. 2022,
fused attention).
"""
from __future__ import annotations

from lowbit.plan.shapes import ModelShapes

# bytes per cached value
KV_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
ADAM_BYTES = 16  # weights 4 + gradients 4 + Adam m 4 + v 4 (or bf16 2 + 2 + fp32 master / m / v 12)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def kv_cache_bytes(s: ModelShapes, context: int, batch: int = 1, cache: str = "fp16") -> int:
    if cache not in KV_BYTES:
        from lowbit.errors import LowbitError
        raise LowbitError(f"KV cache type {cache!r} is unknown: use one of {', '.join(KV_BYTES)}")
    return int(2 * s.layers * s.kv_heads * s.head_dim * context * batch * KV_BYTES[cache])


def activation_bytes_per_token(s: ModelShapes, batch: int = 1, elem: int = 2) -> int:
    """The part of activation_bytes that grows with the context: one decoder layer's working set."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    return batch * (2 * s.hidden + q + 2 * kv + s.hidden + 3 * s.intermediate) * elem


def logits_bytes(s: ModelShapes, batch: int = 1) -> int:
    """The last position's float32 logits: the part of activation_bytes that does not grow."""
    return batch * s.vocab * 4


def activation_bytes(s: ModelShapes, context: int, batch: int = 1, elem: int = 2) -> int:
    return context * activation_bytes_per_token(s, batch, elem) + logits_bytes(s, batch)


def lora_params(s: ModelShapes, rank: int = 16) -> int:
    """Adapter parameters of rank r on every decoder Linear: r x (in + out) each."""
    return sum(rank * (int(shape[0]) + int(shape[1])) for name, shape in s.linears.items()
               if name.rsplit(".", 2)[-2] in LORA_TARGETS)


def training_activation_bytes(s: ModelShapes, context: int, batch: int = 1) -> int:
    tokens = batch * context
    return 2 * tokens * s.hidden * s.layers + 34 * tokens * s.hidden


def training_bytes(s: ModelShapes, nf4_bytes: int, context: int = 2048, batch: int = 1,
                   rank: int = 16) -> dict[str, int]:
    """Weights, gradients and optimizer state (+ checkpointed activations) for each way of training."""
    act = training_activation_bytes(s, context, batch)
    adapters = lora_params(s, rank) * ADAM_BYTES
    return {"full_fp32_adam": s.params * ADAM_BYTES + act,
            "mixed_precision_adam": s.params * ADAM_BYTES + act,
            "lora": s.params * 2 + adapters + act,
            "qlora": nf4_bytes + adapters + act}
