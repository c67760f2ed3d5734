"""Integer weights of 2-4 bits on torch's int4 groupwise kernel (tinygemm; on the CPU
aten._weight_int4pack_mm_for_cpu, which reads 4-bit codes and decodes them in registers).

tinygemm computes w = (c - 8) * s + m per group of 32, 64, 128 or 256 columns. lowbit's grid is
w = (q - z) * s with q in [0, 2**bits) and an integer z, so c = q - z + 8 and m = 0 where that
fits in 4 bits (every 2- and 3-bit grid, symmetric 4-bit), else c = q and m = (8 - z) * s. Groups the kernel cannot take directly are split: a g128 grid over 576 inputs
(a partial last group) runs as g64, each 128-group's scale repeated; per-channel and per-tensor
grids likewise. Act-order layouts with g_idx run with the input columns permuted so that each
group is contiguous. Out features must be a multiple of 16 (the kernel's tiles).

CPU only: CUDA's aten._weight_int4pack_mm takes another packing (_convert_weight_to_int4pack),
not written yet; on other devices these modules are not built (the fallback runs).
"""
from __future__ import annotations

import torch

from lowbit.formats.int_affine import PER_CHANNEL, PER_TENSOR
from lowbit.runtime.packed import PackedLinear, register_kernel

KERNEL_GROUPS = (256, 128, 64, 32)
MID = 8  # tinygemm's code offset
# the CPU kernel's vectorised path is bf16 (activations, scales, offsets and its output); float32
# takes a scalar path 25-40x slower (765 us against 24 us for a 1536 x 576 product), kept for
# exact=True: the dequantized model's products within float32 rounding
KERNEL_DTYPE = torch.bfloat16


def kernel_group(in_features: int, group_size: int) -> int | None:
    """The largest group tinygemm takes that splits lowbit's groups and the row evenly."""
    for g in KERNEL_GROUPS:
        if in_features % g == 0 and (group_size in (PER_CHANNEL, PER_TENSOR) or group_size % g == 0):
            return g
    return None


def contiguous_groups(qt) -> torch.Tensor | None:
    """None when the groups are plain (column // G); else the input permutation that makes
    every group contiguous (act-order with g_idx)."""
    if not qt.act_order:
        return None
    return torch.argsort(qt.g_idx, stable=True)


@register_kernel
class Int4Linear(PackedLinear):
    kernel = "int4 tinygemm"

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group={self.group}, compute={self.compute}"

    @classmethod
    def accepts(cls, qt) -> bool:
        if qt.kind != "int" or qt.bits > 4 or getattr(qt, "act", "none") != "none":
            return False
        out, inp = qt.shape
        if out % 16 or kernel_group(inp, qt.group_size) is None:
            return False
        if qt.act_order and qt.group_size > 0:  # reordered groups must all be G columns
            return inp % qt.group_size == 0 and bool((torch.bincount(qt.g_idx.long()) == qt.group_size).all())
        return True

    @classmethod
    def from_qtensor(cls, qt, bias, dtype, exact=False):
        out, inp = qt.shape
        m = cls(out, inp, bias, dtype)
        m.compute = torch.float32 if exact else KERNEL_DTYPE
        g = kernel_group(inp, qt.group_size)
        perm = contiguous_groups(qt)
        q = qt.q if perm is None else qt.q[:, perm]
        scale = qt.scale.float().expand(out, -1) if qt.scale.shape[0] == 1 else qt.scale.float()
        zero = qt.zero.float().expand(out, -1) if qt.zero.shape[0] == 1 else qt.zero.float()
        # one scale per kernel group: lowbit's group of each kernel group's first column
        first = torch.arange(0, inp, g)
        src = first if perm is None else perm[first]
        groups = qt.g_idx[src].long() if qt.scale.shape[1] > 1 else torch.zeros_like(first)
        s, z = scale[:, groups], zero[:, groups]
        m.group = g
        m.register_buffer("perm", perm)
        # codes re-centred on the kernel's 8 where they fit (2/3-bit grids, symmetric 4-bit): the
        # offset is then 0, not (8 - z) * s rounded to bf16, which cancels against (c - 8) * s
        c = q.to(torch.int32) + (MID - z.to(torch.int32)).repeat_interleave(g, 1)
        centred = bool(((c >= 0) & (c <= 15)).all())
        offset = torch.zeros_like(s) if centred else (MID - z) * s
        m.register_buffer("weight_packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            (c if centred else q.to(torch.int32)).contiguous(), 1))
        del c
        # (in / g, out, 2): scale and tinygemm's additive offset
        m.register_buffer("scales_and_zeros", torch.stack([s, offset], -1).transpose(0, 1)
                          .contiguous().to(m.compute))
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def matmul(x2):
            if self.perm is not None:  # act-order: each group's columns made contiguous
                x2 = x2.index_select(1, self.perm)
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight_packed, self.group, self.scales_and_zeros)
        return self._compute(x, matmul)
