"""The fallback for quantized tensors without a kernel here (NF4, FP4, FP8, NVFP4, MXFP4, GGML
blocks, grids a kernel does not take): the codes stay packed in memory and are decoded to a
float weight for each forward, which is then freed. Slow, but every file can run in the
memory of its codes."""
from __future__ import annotations

import torch

from lowbit.formats.qtensor import KINDS
from lowbit.runtime.packed import PackedLinear, register_kernel


@register_kernel
class DequantLinear(PackedLinear):
    kernel = "dequantize per call"

    @classmethod
    def accepts(cls, qt) -> bool:
        return True

    @classmethod
    def from_qtensor(cls, qt, bias, dtype, exact=False):
        out, inp = qt.shape
        m = cls(out, inp, bias, dtype)
        m.kind, m.header = qt.kind, qt.header()
        for k, v in qt.state().items():  # buffers, so .to() and packed_bytes see them
            m.register_buffer(f"q_{k}", v)
        m._fields = list(qt.state())
        if hasattr(qt, "drop_decoded"):
            qt.drop_decoded()
        return m

    def qtensor(self):
        return KINDS[self.kind].from_state({k: getattr(self, f"q_{k}") for k in self._fields}, dict(self.header))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        W = self.qtensor().dequantize().to(x.dtype)
        return torch.nn.functional.linear(x, W, None if self.bias is None else self.bias.to(x.dtype))
