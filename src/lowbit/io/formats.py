"""Registry of checkpoint formats of a Hugging Face directory (config.json with a
quantization_config + safetensors): compressed-tensors, GPTQ v1/v2, AWQ GEMM (integer grids),
bitsandbytes 4-bit (NF4 / FP4) and 8-bit (LLM.int8()). Each states what it holds (CheckpointFormat.holds, bits, g_idx). A new format is one module that calls register_format()
(io/format_registry.py) and one import line below.

GGUF is not here: it is a single file with its own block grids (io/gguf_*.py).
"""
from __future__ import annotations

from lowbit.errors import LowbitError
from lowbit.io import awq_gemm, bnb, compressed_tensors, gptq_v1  # noqa: F401  (each registers itself)
from lowbit.io.format_registry import FORMATS, CheckpointFormat, register_format

__all__ = ["FORMATS", "CheckpointFormat", "register_format", "get_format", "detect_format"]


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
