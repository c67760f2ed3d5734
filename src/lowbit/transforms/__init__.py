"""Equivalent rescaling or rotation of a layer's weights before quantizing: the float function
is unchanged, what rounding costs is not (smooth: per-channel scales searched per layer)."""
