"""The registry that checkpoint formats add themselves to (io/formats.py imports them all)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from lowbit.formats import QuantizedTensor
from lowbit.spec import QuantSpec


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    # (module name, spec, (out, in)) -> the spec this format can store (group size, act-order ...)
    fit_layout: Callable[[str, QuantSpec, tuple], QuantSpec]
    # (module name, codes, model dtype) -> tensors written for that module, keyed by full name
    pack: Callable[[str, QuantizedTensor, torch.dtype], dict[str, torch.Tensor]]
    # (codes by module, names of Linears left in float) -> config.json "quantization_config"
    quantization_config: Callable[[dict[str, QuantizedTensor], list[str]], dict]
    # config.json "quantization_config" -> True when this format wrote it
    detect: Callable[[dict], bool]
    # (directory, quantization_config) -> (codes by module, every other tensor by name)
    read_tensors: Callable[[Path, dict], tuple[dict[str, QuantizedTensor], dict[str, torch.Tensor]]]
    # dtype the files store scales in ("float16"); None: the model's dtype (float32 when lowbit
    # loads a model), which is the walk's own precision
    scale_dtype: str | None = None

    def fit(self, name: str, spec: QuantSpec, shape: tuple) -> QuantSpec:
        """fit_layout, plus the scale dtype: the spec the walk quantizes with, so that what it
        propagates is exactly what the file dequantizes to (the walk's fit_layout hook)."""
        spec = self.fit_layout(name, spec, shape)
        if self.scale_dtype is not None and spec.scale_dtype != self.scale_dtype:
            spec = replace(spec, scale_dtype=self.scale_dtype)
        return spec


FORMATS: dict[str, CheckpointFormat] = {}


def register_format(fmt: CheckpointFormat) -> CheckpointFormat:
    FORMATS[fmt.name] = fmt
    return fmt
