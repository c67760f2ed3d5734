"""LLM.int8() (Dettmers et al., 2022): int8 weights per output row (absmax / 127, rounded to
nearest), run with the mixed-precision decomposition: input features holding any |x| >= 6
in a forward pass are multiplied in float, the rest by an int8 GEMM with per-token input scales
(runtime/int8_linear.py; the spec's act "llm-int8"). Written in bitsandbytes' 8-bit layout."""
from __future__ import annotations

from lowbit.methods.base import Method, register_method


@register_method
class LLMInt8(Method):
    name = "llm-int8"

    def quantize(self, W, grid, spec, observer=None):
        return grid.rtn(W)
