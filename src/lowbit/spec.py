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
MICROSCALING = {"nvfp4": 16, "mxfp4": 32}  # e2m1 grids with a fixed block
GRID_NAMES = ("int", "nf4", "fp4", "fp8", "fp8-e5m2", "nvfp4", "mxfp4")  # grids a spec may name (GGML block types come from a GGUF file type)
CODE_BOOK_GRIDS = ("nf4", "fp4")  # 16 fixed values scaled by each block's absmax (formats/nf4.py)
ACT_SCHEMES = ("none", "fp8-token", "int8-token", "llm-int8")  # a Linear's input as the runtime rounds it (formats/act_quant.py)
FP8_GRIDS = ("fp8", "fp8-e5m2")  # float8 codes, a scale per tensor / channel / square block (formats/fp8.py)


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
    # size, symmetric), "nf4" (NormalFloat-4 in blocks of group_size weights, 64 by default) or
    # "fp4" (bitsandbytes' e2m1 code book, the same blocks); "fp8" / "fp8-e5m2" (float8 codes,
    # a scale per tensor (group size 0), channel (-1) or group_size x group_size block)
    grid: str = "int"
    double_quant: bool = True  # nf4 / fp4: absmax values stored in 8 bits (QLoRA's double quantization)
    # activations: "none" (weight-only) or "fp8-token" (each token's input rounded to float8 e4m3
    # with its own scale at every forward pass, as vLLM's FP8-dynamic checkpoints run)
    act: str = "none"

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
        if self.grid in CODE_BOOK_GRIDS and (self.bits != 4 or self.group_size <= 0):
            raise LowbitError(f"the {self.grid} grid is 4 bits in blocks (got bits={self.bits}, group size "
                              f"{self.group_size}): use --bits 4 and a positive --group-size such as 64")
        if self.act not in ACT_SCHEMES:
            raise LowbitError(f"activation scheme {self.act!r} is unknown: use {' or '.join(ACT_SCHEMES)}")
        if self.act == "fp8-token" and self.grid != "fp8":
            raise LowbitError(f"fp8-token activations go with FP8 weights (--grid fp8), not the {self.grid} grid")
        if self.act in ("int8-token", "llm-int8") and (self.grid, self.bits, self.group_size, self.symmetric) != (
                "int", 8, -1, True):
            raise LowbitError(f"{self.act} activations run an int8 GEMM on int8 weights with a scale per output "
                              f"channel: use --bits 8 --group-size -1 --sym (got {self.grid} {self.bits}-bit, "
                              f"group size {self.group_size})")
        if self.grid in MICROSCALING and self.bits != 4:
            raise LowbitError(f"the {self.grid} grid is 4 bits (got bits={self.bits}): use --bits 4 or drop --bits")
        if self.grid in FP8_GRIDS and self.bits != 8:
            raise LowbitError(f"the {self.grid} grid is 8 bits (got bits={self.bits}): use --bits 8 or drop --bits")
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


# presets beyond "[method-]wBITS[gGROUP]": other grids, activation schemes; name -> QuantSpec fields
GRID_PRESETS = {"nf4": {"grid": "nf4", "bits": 4, "group_size": 64},
                "gptq-nf4": {"grid": "nf4", "bits": 4, "group_size": 64, "method": "gptq"},
                "nf4-nodq": {"grid": "nf4", "bits": 4, "group_size": 64, "double_quant": False},
                "fp4": {"grid": "fp4", "bits": 4, "group_size": 64},
                "gptq-fp4": {"grid": "fp4", "bits": 4, "group_size": 64, "method": "gptq"},
                # vLLM's FP8-dynamic: a scale per output channel, each token's input in FP8
                "fp8": {"grid": "fp8", "bits": 8, "group_size": -1, "act": "fp8-token"},
                "gptq-fp8": {"grid": "fp8", "bits": 8, "group_size": -1, "act": "fp8-token", "method": "gptq"},
                "fp8-weight": {"grid": "fp8", "bits": 8, "group_size": -1},
                "fp8-block": {"grid": "fp8", "bits": 8, "group_size": 128},
                "nvfp4": {"grid": "nvfp4", "bits": 4, "group_size": 16},
                "gptq-nvfp4": {"grid": "nvfp4", "bits": 4, "group_size": 16, "method": "gptq"},
                "mxfp4": {"grid": "mxfp4", "bits": 4, "group_size": 32},
                "gptq-mxfp4": {"grid": "mxfp4", "bits": 4, "group_size": 32, "method": "gptq"},
                # int8 weights per output channel, each token's input in int8, an int8 GEMM
                "w8a8": {"bits": 8, "group_size": -1, "act": "int8-token", "method": "smoothquant"},
                "w8a8-rtn": {"bits": 8, "group_size": -1, "act": "int8-token"},
                "llm-int8": {"bits": 8, "group_size": -1, "act": "llm-int8", "method": "llm-int8"},
                # a random Hadamard rotation of the residual stream and per head, then GPTQ
                "rot-gptq-w4g128": {"bits": 4, "group_size": 128, "method": "gptq",
                                    "method_args": {"rotate": "hadamard"}},
                "rot-gptq-w4": {"bits": 4, "group_size": -1, "method": "gptq", "method_args": {"rotate": "hadamard"}},
                # lowbit's best measured 4-bit recipe (docs/results.md: rotation + GPTQ w4 g128 has
                # 0.69x GPTQ's KLD, and beats SignRound at 0.42x its time), the default of `lowbit quantize`:
                # rotate "auto" rotates where that was measured (integer grids, Llama-like models)
                "best-4bit": {"bits": 4, "group_size": 128, "method": "gptq", "method_args": {"rotate": "auto"}}}

_PRESET = re.compile(r"^(?:(?P<method>[a-z0-9]+)-)?w(?P<bits>\d)(?:g(?P<group>\d+))?"
                     r"(?P<sym>-sym|-asym)?(?P<mse>-mse)?$")

BEST_4BIT = "best-4bit"  # the default of `lowbit quantize`

PRESETS = ("w4g128", "w4g64", "w4g32", "w4", "w3g128", "w3", "w2g64", "w8", "w8g128",
           "gptq-w4g128", "gptq-w3g128", "gptq-w4", "w4g128-asym") + tuple(GRID_PRESETS)


def preset(name: str, **changes) -> QuantSpec:
    """QuantSpec from a preset name such as "w4g128" or "gptq-w4g128-asym"."""
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
