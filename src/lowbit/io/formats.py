"""Registry of checkpoint formats that hold integer-affine codes in a Hugging Face
directory (config.json with a quantization_config + safetensors): compressed-tensors,
GPTQ v1, AWQ GEMM. A new format is one module that calls register_format() and is
imported at the bottom of this file.

GGUF is not here: it is a single file with its own block grids (io/gguf_*.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from lowbit.errors import LowbitError
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


def get_format(name: str) -> CheckpointFormat:
    if name not in FORMATS:
        raise LowbitError(f"unknown checkpoint format {name!r}: choose one of {', '.join(sorted(FORMATS))}"
                          "; GGUF is written by lowbit.io.gguf_writer.write_gguf, not yet from the CLI")
    return FORMATS[name]


def detect_format(qconfig: dict | None) -> CheckpointFormat | None:
    """The registered format that wrote this quantization_config, if any."""
    if not qconfig:
        return None
    for fmt in FORMATS.values():
        if fmt.detect(qconfig):
            return fmt
    return None


from lowbit.io import compressed_tensors  # noqa: E402,F401  (registers itself)
from lowbit.io import gptq_v1  # noqa: E402,F401  (registers itself)
from lowbit.io import awq_gemm  # noqa: E402,F401  (registers itself)
