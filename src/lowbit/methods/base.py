"""The method interface the layer walk calls, and the registry of methods by name."""
from __future__ import annotations

from typing import ClassVar

import torch

from lowbit.calibration.observer import Observer
from lowbit.errors import LowbitError
from lowbit.formats import QuantizedTensor
from lowbit.spec import QuantSpec

METHODS: dict[str, type["Method"]] = {}


class Method:
    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = False
    options: ClassVar[type | None] = None  # frozen dataclass of the method's spec.method_args keys

    def observer(self, module: torch.nn.Linear, spec: QuantSpec) -> Observer | None:
        """Statistics this method needs for `module` (None: weights alone suffice)."""
        return None

    def quantize(self, W: torch.Tensor, spec: QuantSpec,
                 observer: Observer | None = None) -> QuantizedTensor:
        """Codes for W (out, in) under `spec` (its group size already fits the format)."""
        raise NotImplementedError


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise LowbitError(f"unknown method {name!r}: choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]()
