"""QuantSpec: what to quantize and how, as a frozen, JSON-serialisable value.

Presets are names like "w4g128", "gptq-w4g128", "w8", "w3g128-asym", "w4-mse":
    [METHOD-]w{bits}[g{group}][-sym|-asym][-mse]
no g means per output channel.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lowbit.errors import LowbitError

DEFAULT_IGNORE = ("lm_head",)
GRID_NAMES = ("int", "nf4")  # grids a spec may name (GGML block types come from a GGUF file type)  # embeddings are not Linear layers, so they stay float too


@dataclass(frozen=True)
class QuantSpec:
    method: str = "rtn"
    bits: int = 4
    group_size: int = 128  # > 0 per group, -1 per output channel, 0 per tensor
    symmetric: bool = True
    clip: str = "auto"  # "minmax", "mse" (clipping search per group), "auto": the method's choice
    targets: tuple[str, ...] = ("Linear",)  # "Linear" or "re:<regex>" on module names
    ignore: tuple[str, ...] = DEFAULT_IGNORE  # names or "re:<regex>"; checked after targets
    # per-module overrides: ("re:<regex>", {"bits": 8, ...}) in order, later ones win
    overrides: tuple[tuple[str, dict], ...] = ()
    method_args: dict[str, Any] = field(default_factory=dict)  # e.g. GPTQ damp_percent
    # the dtype the output format stores scales in ("float16" for GPTQ/AWQ), set per module by
    # the format's fit (io/formats.py): grids are rounded to it before codes are chosen, so the
    # file dequantizes to exactly the weights the walk propagated. None: the working precision
    scale_dtype: str | None = None
    # a GGML block type ("Q4_K", "Q5_0"): the grid is llama.cpp's, not bits/group_size/symmetric
    # (set per tensor by the GGUF path from the file type's mix; formats/ggml_tensor.py)
    ggml_type: str | None = None
    # the grid every Linear is quantized on (formats/grid.py): "int" (integer affine: bits, group
    # size, symmetric) or "nf4" (NormalFloat-4 in blocks of group_size weights, 64 by default)
    grid: str = "int"
    double_quant: bool = True  # nf4: absmax values stored in 8 bits (QLoRA's double quantization)

    def __post_init__(self):
        self.validate()

    def validate(self):
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise LowbitError(f"bits={self.bits} is out of range: use an integer from 2 to 8")
        if not isinstance(self.group_size, int) or self.group_size < -1:
            raise LowbitError(f"group size {self.group_size} is invalid: use a positive size, "
                              "-1 for per channel or 0 for per tensor")
        if self.clip not in ("auto", "minmax", "mse"):
            raise LowbitError(f"clip={self.clip!r} is unknown: use 'auto', 'minmax' or 'mse'")
        if self.grid not in GRID_NAMES:
            raise LowbitError(f"grid {self.grid!r} is unknown: use {' or '.join(GRID_NAMES)}")
        if self.grid == "nf4" and (self.bits != 4 or self.group_size <= 0):
            raise LowbitError(f"the nf4 grid is 4 bits in blocks (got bits={self.bits}, group size "
                              f"{self.group_size}): use --bits 4 and a positive --group-size such as 64")
        if self.scale_dtype not in (None, "float16", "bfloat16", "float32"):
            raise LowbitError(f"scale_dtype={self.scale_dtype!r} is unknown: use float16, bfloat16 or float32")

    def for_module(self, name: str) -> "QuantSpec":
        """The spec that applies to one module, after per-module overrides."""
        spec = self
        for pattern, changes in self.overrides:
            if match_name(name, pattern):
                spec = replace(spec, **changes, overrides=())
        return spec

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"], d["ignore"] = list(self.targets), list(self.ignore)
        d["overrides"] = [[p, dict(c)] for p, c in self.overrides]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantSpec":
        d = dict(d)
        for key in ("targets", "ignore"):
            if key in d:
                d[key] = tuple(d[key])
        if "overrides" in d:
            d["overrides"] = tuple((p, dict(c)) for p, c in d["overrides"])
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "QuantSpec":
        return cls.from_dict(json.loads(text))


def match_name(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern)


# presets that are not integer affine: name -> QuantSpec fields
GRID_PRESETS = {"nf4": {"grid": "nf4", "bits": 4, "group_size": 64},
                "gptq-nf4": {"grid": "nf4", "bits": 4, "group_size": 64, "method": "gptq"},
                "nf4-nodq": {"grid": "nf4", "bits": 4, "group_size": 64, "double_quant": False}}

_PRESET = re.compile(r"^(?:(?P<method>[a-z0-9]+)-)?w(?P<bits>\d)(?:g(?P<group>\d+))?"
                     r"(?P<sym>-sym|-asym)?(?P<mse>-mse)?$")

# lowbit's best measured 4-bit recipe (README: GPTQ's KLD is 0.38x RTN's at w4 g128), the
# default of `lowbit quantize` and the preset "best-4bit"
BEST_4BIT = "gptq-w4g128"
ALIASES = {"best-4bit": BEST_4BIT}

PRESETS = ("w4g128", "w4g64", "w4g32", "w4", "w3g128", "w3", "w2g64", "w8", "w8g128",
           "gptq-w4g128", "gptq-w3g128", "gptq-w4", "w4g128-asym") + tuple(GRID_PRESETS)


def preset(name: str, **changes) -> QuantSpec:
    """QuantSpec from a preset name such as "w4g128" or "gptq-w4g128-asym"."""
    name = ALIASES.get(name.strip().lower(), name)
    if name.strip().lower() in GRID_PRESETS:
        return QuantSpec(**{**GRID_PRESETS[name.strip().lower()], **changes})
    m = _PRESET.match(name.strip().lower())
    if not m:
        raise LowbitError(f"unknown preset {name!r}: use a name like "
                          f"'w4g128', 'gptq-w4g128', 'w8', 'w3g128-asym', 'nf4' or 'best-4bit'")
    kw: dict[str, Any] = {"bits": int(m["bits"]),
                          "group_size": int(m["group"]) if m["group"] else -1}
    if m["method"]:
        kw["method"] = m["method"]
    if m["sym"]:
        kw["symmetric"] = m["sym"] == "-sym"
    if m["mse"]:
        kw["clip"] = "mse"
    kw.update(changes)
    return QuantSpec(**kw)
