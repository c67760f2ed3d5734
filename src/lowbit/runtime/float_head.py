"""The float head of a quantized model, held in bf16 for the fast path.

Formats keep the token embedding and lm_head in float (tied on small models); at batch 1 the head
is the largest tensor a decode step reads (SmolLM2-135M: 49152 x 576 float32 = 113 MB, against
about 60 MB of 4-bit Linears). The fast kernels already compute in bf16, so the head is held in
bf16 too: half the bytes per token and half the memory. Tied weights stay one tensor (the
embedding looks its rows up in the same bf16 table and hands float32 on). exact=True keeps float32.
"""
from __future__ import annotations

import torch

HEAD_DTYPE = torch.bfloat16


class CastEmbedding(torch.nn.Embedding):
    """An embedding whose table is stored in one dtype and whose output is another."""

    out_dtype = torch.float32

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids).to(self.out_dtype)


class CastHead(torch.nn.Linear):
    """y = x W^T (+ b) computed in the weight's dtype, returned in x's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        b = None if self.bias is None else self.bias.to(w.dtype)
        return torch.nn.functional.linear(x.to(w.dtype), w, b).to(x.dtype)


def head_in_bf16(model: torch.nn.Module, dtype: torch.dtype) -> bool:
    """Hold a float32 model's lm_head (and, when tied, its embedding) in bf16; True if it did."""
    head = model.get_output_embeddings()
    if dtype != torch.float32 or type(head) is not torch.nn.Linear or head.weight.dtype != torch.float32:
        return False
    emb = model.get_input_embeddings()
    tied = emb is not None and emb.weight is head.weight
    if tied and type(emb) is not torch.nn.Embedding:  # a scaled or custom embedding: untying would add a copy
        return False
    weight = torch.nn.Parameter(head.weight.detach().to(HEAD_DTYPE), requires_grad=False)
    head.__class__ = CastHead
    head.weight = weight
    if tied:
        emb.__class__ = CastEmbedding
        emb.out_dtype = dtype
        emb.weight = weight
    return True
