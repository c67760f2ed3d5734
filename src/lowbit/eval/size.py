"""Sizes on disk and bits per weight of quantized Linear layers, scales included."""
from __future__ import annotations

from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")


def size_on_disk(path: str | Path) -> int:
    """Bytes of the weight files of a model directory (or of a single weight file)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES)


def bits_per_weight(path: str | Path) -> float | None:
    """Stored bits of every quantized Linear (codes, scales, zero points, g_idx) per weight,
    read from the compressed-tensors files themselves."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    stored = weights = 0
    suffixes = ("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape")
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                suffix = k.rpartition(".")[2]
                if suffix not in suffixes:
                    continue
                t = fh.get_tensor(k)
                if suffix == "weight_shape":
                    weights += int(t[0]) * int(t[1])
                else:
                    stored += t.numel() * t.element_size() * 8
    return stored / weights if weights else None
