"""Round-to-nearest: each weight to the nearest point of its group's grid."""
from __future__ import annotations

from lowbit.formats import quantize_rtn
from lowbit.methods.base import Method, register_method


@register_method
class RTN(Method):
    name = "rtn"

    def quantize(self, W, spec, observer=None):
        clip = "minmax" if spec.clip == "auto" else spec.clip  # the classic baseline
        return quantize_rtn(W, spec.bits, spec.symmetric, spec.group_size, clip)
