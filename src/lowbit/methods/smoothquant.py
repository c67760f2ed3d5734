"""SmoothQuant (Xiao et al., 2023) W8A8: int8 weights per output channel, each token's input
rounded to int8 at run time, an int8 GEMM. Activation outliers sit in a few input channels, so
before rounding, s_j = amax(x_j) ** alpha / amax(W[:, j]) ** (1 - alpha) moves range from each
input channel into its weight column, folded exactly into the preceding norm or Linear
(transforms/smooth.py). alpha is searched per layer pair against the layer's output with W8A8
rounding (pipeline/smoothing.format_smoothing), or given (option alpha). The codes are then
round-to-nearest on the int8 grid, as SmoothQuant does."""
from __future__ import annotations

from dataclasses import dataclass

from lowbit.methods.base import Method, register_method


@dataclass(frozen=True)
class SmoothQuantOptions:
    alpha: float | None = None  # migration strength for every pair (None: searched per layer pair)


@register_method
class SmoothQuant(Method):
    name = "smoothquant"
    needs_calibration = True  # the smoothing search needs calibration inputs
    options = SmoothQuantOptions
    smooths = True  # the walk smooths with this method unless --smooth off

    def quantize(self, W, grid, spec, observer=None):
        return grid.rtn(W)
