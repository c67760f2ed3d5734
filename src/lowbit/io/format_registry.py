"""The registry that checkpoint formats add themselves to (io/formats.py imports them all)."""
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
    # what the format stores: quantized-tensor kinds (formats/qtensor.py), code widths, and
    # whether groups may follow act-order (a per-column g_idx); asked by quantize before loading,
    # by export and by the CLI instead of tables of their own
    holds: tuple[str, ...] = ("int",)
    bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    g_idx: bool = False
    one_grid: bool = False  # its config records one grid for the whole model (bitsandbytes' quant_type)
    acts: tuple[str, ...] = ("none",)  # activation schemes its config can record (formats/act_quant.py)
    # (directory, quantization_config) -> stored bits per quantized weight, from tensor sizes
    stored_bits: Callable[[Path, dict], float | None] | None = None
    title: str = ""  # how messages name it ("AWQ GEMM"); default: the name

    @property
    def label(self) -> str:
        return self.title or self.name

    def check_spec(self, spec: QuantSpec) -> None:
        """One-line error, before any loading, for a grid or width this format cannot store."""
        grids = {spec.for_module(p).grid for p, _ in spec.overrides} | {spec.grid}
        if self.one_grid and len(grids) > 1:
            raise LowbitError(f"{self.label} records one grid for the whole model, not {' and '.join(sorted(grids))}: "
                              "use one --grid for every Linear")
        for grid in sorted(grids):
            if grid not in self.holds:
                raise LowbitError(f"{self.label} does not store the {grid} grid (it holds {', '.join(self.holds)}): "
                                  f"use --grid {self.holds[0]}, or another --format")
        if spec.act not in self.acts:
            runs = " or ".join(f for f, v in FORMATS.items() if spec.act in v.acts)
            raise LowbitError(f"{self.label} does not record {spec.act} activations (it records "
                              f"{', '.join(self.acts)}): use --format {runs or 'compressed-tensors'}")
        widths = {spec.for_module(p).bits for p, _ in spec.overrides} | {spec.bits}
        for b in sorted(widths):
            if spec.grid == "int" and b not in self.bits:
                others = [g for g in self.holds if g != "int"]
                raise LowbitError(f"{self.label} stores {', '.join(map(str, self.bits))}-bit integer codes, not {b}: "
                                  f"use --bits {self.bits[-1] if b > self.bits[-1] else self.bits[0]}"
                                  + (f", --grid {' or '.join(others)}" if others else "") + " or another --format")

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
