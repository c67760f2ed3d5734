"""Sizes on disk and bits per weight of quantized Linear layers, scales included.

bits_per_weight = stored bits of the quantized Linears / their weight count, read from the
files themselves (tensor byte sizes, not a formula). Each checkpoint format says which of its
tensors count (CheckpointFormat.stored_bits, io/format_registry.py):
  compressed-tensors  weight_packed + weight_scale + weight_zero_point + weight_g_idx + weight_shape
  GPTQ (v1, v2)       qweight + qzeros + scales + g_idx
  AWQ GEMM            qweight + qzeros + scales
  bitsandbytes NF4    weight + absmax + quant_map + nested_absmax + nested_quant_map + quant_state
  GGUF                the decoder layers' Linear weights (blk.N.*.weight, 2-D) stored in a block
                      type (Q8_0, Q4_K, ...): the bytes of their blocks, scales and mins included;
                      token embeddings and the output matrix are not counted (lowbit leaves them
                      float in its other formats); None when no such tensor is quantized (F16/F32).
A float directory has no quantized Linears: None.
"""
from __future__ import annotations

import json
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")


def size_on_disk(path: str | Path) -> int:
    """Bytes of the weight files of a model directory (or of a single weight file)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES)


def bits_per_weight(path: str | Path) -> float | None:
    """Stored bits of every quantized Linear (codes, scales, zero points, g_idx) per weight."""
    p = Path(path)
    if p.is_file():
        return _gguf_bits(p) if p.suffix.lower() == ".gguf" else None
    if not p.is_dir():
        return None
    from lowbit.io.formats import detect_format

    qconfig = _qconfig(p)
    fmt = detect_format(qconfig)
    return fmt.stored_bits(p, qconfig) if fmt is not None else None


def _qconfig(path: Path) -> dict | None:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    q = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    return q if isinstance(q, dict) else None


def _gguf_bits(path: Path) -> float | None:
    from gguf import GGMLQuantizationType as T

    from lowbit.io.gguf_reader import open_gguf

    r = open_gguf(path)
    stored = weights = 0
    for t in r.tensors:
        if not (t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2):
            continue
        if t.tensor_type in (T.F32, T.F16, T.BF16, T.F64):
            continue
        stored += 8 * int(t.n_bytes)
        weights += int(t.n_elements)
    return stored / weights if weights else None
