"""Weight bytes of a model at every precision and grid lowbit writes, scales and zero points included.

Two views:
- raw: parameters x bits / 8 at fp32 / fp16 / bf16 / int8 / int4 (the arithmetic tutorials do:
  7B = 28 / 14 / 14 / 7 / 3.5 GB), nothing else counted;
- settings: each grid or GGUF type on the model's real tensor shapes. A decoder Linear's bytes are
  its quantized tensor's own stored_bytes (the grid's layout: codes, scales, zero points, code
  books, g_idx), measured on a sample of its rows at its real width and scaled to all rows (the
  layouts are affine in the row count, so this is exact up to a tensor's few constant bytes); the
  other tensors (embedding, head, norms) stay float in the checkpoint's dtype, as lowbit's
  HF formats keep them, and integer scales are in that dtype too (compressed-tensors, the default
  format; GPTQ and AWQ files store 16-bit scales, slightly smaller for a float32 model). GGUF types place every tensor with llama.cpp's mix rules
  (io/gguf_mixes.plan_types) and count its blocks (row_bytes): the tensor data of the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from lowbit.plan.shapes import ModelShapes, numel

RAW_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8, "int4": 4}

# (name, lowbit preset, the format that writes it, how); presets from spec.preset
GRID_SETTINGS = (
    ("int8 per channel", "w8", "compressed-tensors", "lowbit quantize --method rtn --bits 8 --group-size -1"),
    ("int4 g128", "gptq-w4g128", "compressed-tensors", "lowbit quantize (the default: GPTQ w4 g128)"),
    ("int4 g128 asym", "gptq-w4g128-asym", "compressed-tensors", "lowbit quantize --asym"),
    ("int4 per channel", "gptq-w4", "compressed-tensors", "lowbit quantize --group-size -1"),
    ("int3 g128", "gptq-w3g128", "compressed-tensors", "lowbit quantize --bits 3"),
    ("int2 g64", "w2g64", "compressed-tensors", "lowbit quantize --bits 2 --group-size 64"),
    ("NF4 + double quant", "gptq-nf4", "bnb", "lowbit quantize --grid nf4 --format bnb"),
    ("NF4", "nf4-nodq", "bnb", "lowbit quantize --grid nf4 --no-double-quant --format bnb"),
    ("FP8 e4m3 per channel", "fp8", "compressed-tensors", "lowbit quantize --preset fp8"),
    ("NVFP4", "nvfp4", "compressed-tensors", "lowbit quantize --preset nvfp4"),
    ("MXFP4", "mxfp4", "compressed-tensors", "lowbit quantize --preset mxfp4"),
)
GGUF_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K")
SAMPLE_ROWS = 64


@dataclass
class Setting:
    name: str
    key: str  # preset or GGUF file type
    how: str
    bytes: int  # the whole model's weights
    linear_bits_per_weight: float  # the decoder Linears alone, scales included
    gguf: bool = False

    def as_dict(self) -> dict:
        return {"name": self.name, "key": self.key, "how": self.how, "bytes": self.bytes,
                "bits_per_weight": round(self.linear_bits_per_weight, 4), "gguf": self.gguf}


def raw_bytes(params: int) -> dict[str, int]:
    return {k: params * bits // 8 for k, bits in RAW_BITS.items()}


@lru_cache(maxsize=None)
def linear_bytes(preset: str, rows: int, cols: int, scale_bits: int = 16, group_size: int | None = None) -> int:
    """Stored bytes of a (rows, cols) weight on a preset's grid, from two row samples.
    scale_bits: what an integer grid's scales are stored in (compressed-tensors keeps the
    checkpoint's dtype: 32 for a float32 model; GPTQ and AWQ store 16). group_size: the group
    the format's fit chose for this shape (None: the preset's)."""
    from dataclasses import replace

    from lowbit.formats.grid import grid_for
    from lowbit.spec import preset as spec_of

    spec = spec_of(preset)
    grid = grid_for(spec if group_size is None else replace(spec, group_size=group_size))
    gen = torch.Generator().manual_seed(0)

    def stored(r: int) -> int:
        qt = grid.rtn(torch.randn(r, cols, generator=gen))
        extra = (scale_bits - 16) * qt.scale.numel() // 8 if qt.kind == "int" else 0  # stored_bytes counts 16
        return qt.stored_bytes() + extra

    if rows <= 2 * SAMPLE_ROWS:
        return stored(rows)
    a, b = stored(SAMPLE_ROWS), stored(2 * SAMPLE_ROWS)
    return a + (b - a) * (rows - SAMPLE_ROWS) // SAMPLE_ROWS


def float_elem_bytes(shapes: ModelShapes) -> int:
    """What the unquantized tensors are stored in: the checkpoint's dtype (16-bit when unknown)."""
    dtype = getattr(shapes.config, "dtype", None) or getattr(shapes.config, "torch_dtype", None)
    return 4 if str(dtype).replace("torch.", "") == "float32" else 2


def _scale(shapes: ModelShapes) -> float:
    """--params N whose guessed shapes count a different total: place N, not the guess."""
    counted = sum(numel(s) for s in shapes.tensors.values())
    return shapes.params / counted if counted else 1.0


def grid_setting(shapes: ModelShapes, name: str, preset: str, fmt_name: str, how: str) -> Setting:
    """The format's own fit places each Linear's groups (compressed-tensors stores g128 on
    576-wide rows as 96-wide groups), as quantize does."""
    from lowbit.io.formats import get_format
    from lowbit.spec import preset as spec_of

    fmt, spec = get_format(fmt_name), spec_of(preset)
    f = _scale(shapes)
    lin_weights = sum(numel(s) for s in shapes.linears.values())
    elem = float_elem_bytes(shapes)
    lin = 0
    for module, shape in shapes.linears.items():
        fitted = fmt.fit(module.removesuffix(".weight"), spec, tuple(shape))
        lin += linear_bytes(preset, int(shape[0]), int(shape[1]), 8 * elem, fitted.group_size)
    rest = sum(numel(s) for n, s in shapes.tensors.items() if n not in shapes.linears) * elem
    return Setting(name, preset, how, int((lin + rest) * f), 8 * lin / lin_weights)


def gguf_setting(shapes: ModelShapes, file_type: str) -> Setting:
    from lowbit.io.gguf_mixes import plan_types, row_bytes

    f = _scale(shapes)
    types = plan_types(shapes.tensors, file_type, config=shapes.config)
    total = lin = lin_weights = 0
    for name, t in types.items():
        shape = shapes.tensors[name]
        rows, cols = (numel(shape[:-1]), int(shape[-1])) if len(shape) > 1 else (1, int(shape[0]))
        b = rows * row_bytes(t, cols)
        total += b
        if name in shapes.linears:
            lin, lin_weights = lin + b, lin_weights + rows * cols
    return Setting(file_type, file_type, f"lowbit quantize --format gguf --gguf-type {file_type}", int(total * f),
                   8 * lin / max(lin_weights, 1), gguf=True)


def settings(shapes: ModelShapes) -> list[Setting]:
    out = [grid_setting(shapes, n, p, f, h) for n, p, f, h in GRID_SETTINGS]
    return out + [gguf_setting(shapes, t) for t in GGUF_TYPES]
