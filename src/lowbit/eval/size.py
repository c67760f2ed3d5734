"""Sizes on disk and bits per weight of quantized Linear layers, scales included.

bits_per_weight = stored bits of the quantized Linears / their weight count, read from the
files themselves (tensor byte sizes, not a formula):
  compressed-tensors  weight_packed + weight_scale + weight_zero_point + weight_g_idx + weight_shape
  GPTQ (v1, v2)       qweight + qzeros + scales + g_idx
  AWQ GEMM            qweight + qzeros + scales
  GGUF                the decoder layers' Linear weights (blk.N.*.weight, 2-D) stored in a block
                      type (Q8_0, Q4_K, ...): the bytes of their blocks, scales and mins included;
                      token embeddings and the output matrix are not counted (lowbit leaves them
                      float in its other formats); None when no such tensor is quantized (F16/F32).
A float directory has no quantized Linears: None.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from lowbit.io.st_dtypes import ELEMENT_BYTES

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")
CT_SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape")


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
    qconfig = _qconfig(p)
    method = str(qconfig.get("quant_method", "")).lower() if qconfig else ""
    if method in ("gptq", "awq"):
        return _gptq_awq_bits(p, qconfig, method)
    return _ct_bits(p)


def _qconfig(path: Path) -> dict | None:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    q = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    return q if isinstance(q, dict) else None


def _header(f: Path) -> dict:
    """{name: (dtype, shape)} from a safetensors header (bounds-checked first), no tensor read."""
    from lowbit.io.file_checks import check_safetensors

    check_safetensors(f)
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        head = json.loads(fh.read(n))
    return {k: (v["dtype"], v["shape"]) for k, v in head.items() if k != "__metadata__"}


def _nbytes(dtype: str, shape) -> int:
    return ELEMENT_BYTES[dtype] * math.prod(shape)


def _ct_bits(path: Path) -> float | None:
    from safetensors import safe_open

    stored = weights = 0
    for f in sorted(path.glob("*.safetensors")):
        head = _header(f)
        shapes = [k for k in head if k.rpartition(".")[2] == "weight_shape"]
        if not shapes:
            continue
        with safe_open(str(f), framework="pt") as fh:
            for k in shapes:
                out, inp = (int(v) for v in fh.get_tensor(k).tolist())
                weights += out * inp
        stored += 8 * sum(_nbytes(*head[k]) for k in head if k.rpartition(".")[2] in CT_SUFFIXES)
    return stored / weights if weights else None


def _gptq_awq_bits(path: Path, qconfig: dict, method: str) -> float | None:
    from lowbit.io.gptq_v1 import WORD, module_settings

    suffixes = ("qweight", "qzeros", "scales", "g_idx")
    modules: dict[str, dict[str, tuple]] = {}
    for f in sorted(path.glob("*.safetensors")):
        for k, v in _header(f).items():
            mod, _, suffix = k.rpartition(".")
            if suffix in suffixes:
                modules.setdefault(mod, {})[suffix] = v
    stored = weights = 0
    for mod, t in modules.items():
        if "qweight" not in t or "scales" not in t:
            continue
        out = t["scales"][1][1]
        if method == "awq":  # qweight (in, out / 8)
            inp = t["qweight"][1][0]
        elif "g_idx" in t:
            inp = t["g_idx"][1][0]
        else:  # qweight (ceil(in * bits / 32), out): a whole number of words
            settings = module_settings(mod, qconfig) or {}
            inp = t["qweight"][1][0] * WORD // int(settings.get("bits") or 4)
        weights += out * inp
        stored += 8 * sum(_nbytes(*v) for v in t.values())
    return stored / weights if weights else None


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
