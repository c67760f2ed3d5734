"""Round-to-nearest: each weight to the nearest point of its group's grid."""
from __future__ import annotations

from lowbit.formats import quantize_rtn
from lowbit.methods.base import Method, register_method


@register_method
class RTN(Method):
    name = "rtn"

    def quantize(self, W, spec, observer=None):
        if spec.ggml_type is not None:  # a GGUF tensor: llama.cpp's own rounding on its block grids
            from lowbit.methods.ggml_grid import quantize_on_ggml_grid
            return quantize_on_ggml_grid(W, spec, observer)
        clip = "minmax" if spec.clip == "auto" else spec.clip  # the classic baseline
        return quantize_rtn(W, spec.bits, spec.symmetric, spec.group_size, clip, spec.scale_dtype)
