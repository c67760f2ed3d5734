"""The bitsandbytes format (`--format bnb`): 4-bit NF4 / FP4 (io/bnb_4bit.py) or 8-bit LLM.int8()
(io/bnb_8bit.py), chosen by the grid; one of them per model, as transformers' config records it."""
from __future__ import annotations

from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.formats.nf4 import QUANT_TYPES
from lowbit.io import bnb_4bit, bnb_8bit
from lowbit.io.format_registry import CheckpointFormat, register_format
from lowbit.spec import QuantSpec


def _part(kind_or_grid: str):
    return bnb_8bit if kind_or_grid == "int" else bnb_4bit


def _part_of_config(qconfig: dict):
    return bnb_8bit if bnb_8bit.detect(qconfig) else bnb_4bit


def fit_layout(name: str, spec: QuantSpec, shape: tuple) -> QuantSpec:
    return _part(spec.grid).fit_layout(name, spec, shape)


def pack_tensor(name, qt, dtype):
    return _part(qt.kind).pack_tensor(name, qt, dtype)


def quantization_config(tensors: dict, ignore: list[str]) -> dict:
    kinds = {qt.kind for qt in tensors.values()}
    if len(kinds) > 1:
        raise LowbitError("bitsandbytes records 4-bit or 8-bit once per model: quantize every Linear on one grid")
    return _part(kinds.pop() if kinds else "nf4").quantization_config(tensors, ignore)


def detect(qconfig: dict) -> bool:
    return bnb_4bit.detect(qconfig) or bnb_8bit.detect(qconfig)


def read_tensors(model_dir: Path, qconfig: dict):
    return _part_of_config(qconfig).read_tensors(model_dir, qconfig)


def stored_bits(model_dir: Path, qconfig: dict):
    return _part_of_config(qconfig).stored_bits(model_dir, qconfig)


register_format(CheckpointFormat("bnb", fit_layout, pack_tensor, quantization_config, detect, read_tensors,
                                 holds=(*QUANT_TYPES, "int"), bits=(8,), one_grid=True, stored_bits=stored_bits,
                                 acts=("none", "llm-int8"), title="bitsandbytes"))
