"""The method interface the layer walk calls, and the registry of methods by name."""
from __future__ import annotations

from typing import ClassVar

import torch

from lowbit.calibration.observer import Observer
from lowbit.errors import LowbitError
from lowbit.formats import Grid, QTensor
from lowbit.spec import QuantSpec

METHODS: dict[str, type["Method"]] = {}


class Method:
    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = False
    options: ClassVar[type | None] = None  # frozen dataclass of the method's spec.method_args keys
    auto_clip: ClassVar[str] = "minmax"  # what clip "auto" means on integer grids for this method
    smooths: ClassVar[bool | str] = False  # smoothing is part of the method (smooth "auto" turns it on; "awq": AWQ's rule)
    tunes_layers: ClassVar[bool] = False  # tune() fits a whole decoder layer before its Linears are quantized

    def observer(self, module: torch.nn.Linear, spec: QuantSpec) -> Observer | None:
        """Statistics this method needs for `module` (None: weights alone suffice)."""
        return None

    def float_targets(self, spec: QuantSpec) -> bool:
        """For methods with tunes_layers: True to tune against the float model's own outputs
        (the walk then carries the float model's activations beside the quantized ones)."""
        return False

    def tune(self, layer: torch.nn.Module, modules: dict[str, torch.nn.Linear], grids: dict[str, Grid],
             batches, spec: QuantSpec, forward, float_outputs=None) -> tuple[dict, dict]:
        """For methods with tunes_layers: learn what quantize() needs for all of a layer's
        Linears at once, on its calibration inputs (batches of (hidden, args, kwargs), from the
        quantized layers before it), against float_outputs (the float layer on the float model's
        inputs, when float_targets) or else the float layer's output on the same inputs;
        forward() is the walk's autocast context. Returns (per Linear the observer quantize()
        receives, what to report for the layer)."""
        raise NotImplementedError

    def quantize(self, W: torch.Tensor, grid: Grid, spec: QuantSpec,
                 observer: Observer | None = None) -> QTensor:
        """Codes for W (out, in) on `grid` (formats/grid.py: resolved by the walk from the spec the
        output format fitted); spec carries the method's options (spec.method_args)."""
        raise NotImplementedError


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise LowbitError(f"unknown method {name!r}: choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]()
