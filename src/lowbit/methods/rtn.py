"""Round-to-nearest: each weight to the nearest point of its grid, as the grid defines it
(integer affine: min-max range; GGML blocks: llama.cpp's own rounding; NF4: bitsandbytes')."""
from __future__ import annotations

from lowbit.methods.base import Method, register_method


@register_method
class RTN(Method):
    name = "rtn"

    def quantize(self, W, grid, spec, observer=None):
        return grid.rtn(W)
