"""Typed options: each method and the walk state theirs as a frozen dataclass.

spec.method_args stays a plain dict (it is what run.json and lowbit.json record), but every key
in it must be a field of the walk's options or of the chosen method's: a misspelled key is a
one-line error naming the nearest valid one, never silently ignored, and each value is checked
against its field's type and choices. Code reads the options through `options_of(...)`, typed,
with the defaults in one place.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass

from lowbit.errors import LowbitError


@dataclass(frozen=True)
class WalkOptions:
    """What the layer walk does around any method (pipeline/sequential.py, pipeline/smoothing.py)."""
    true_sequential: bool = True  # later projections' statistics from the quantized earlier ones
    forward_dtype: str = "auto"  # calibration forwards: float32, bfloat16, auto
    cache_bytes: int | None = None  # replayed layer outputs kept in memory (None: 2 GB or less)
    smooth: str = "auto"  # per-channel smoothing: auto, on, off, awq
    smooth_tokens: int | None = None  # calibration tokens per layer for the smoothing search (None: 4096; awq 1024)
    head_gptq: bool = True  # GGUF with gptq: the tied output matrix gets GPTQ too
    rotate: str = "none"  # whole-model rotation before the walk (transforms/rotate.py): none, hadamard, auto; seeded by --seed

    CHOICES: typing.ClassVar[dict] = {"forward_dtype": ("auto", "float32", "bfloat16"),
                                      "smooth": ("auto", "on", "off", "awq"), "rotate": ("none", "hadamard", "auto")}


def _type_ok(value, annotation: str) -> bool:
    kinds = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}
    for part in annotation.replace(" ", "").split("|"):
        if part == "None" and value is None:
            return True
        ok = kinds.get(part, ())
        if ok and isinstance(value, ok) and not (part in ("int", "float") and isinstance(value, bool)):
            return True
    return False


def check_options(args: dict, classes: list[type], owner: str) -> None:
    """One-line error for a key no class in `classes` has, or a value of the wrong type/choice."""
    fields = {f.name: (cls, f) for cls in classes for f in dataclasses.fields(cls)}
    for key, value in args.items():
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
            hint = f"did you mean {near[0]!r}?" if near else f"valid: {', '.join(sorted(fields))}"
            raise LowbitError(f"unknown option {key!r} for {owner}: {hint}")
        cls, f = fields[key]
        if not _type_ok(value, str(f.type)):
            raise LowbitError(f"option {key}={value!r} for {owner} must be {f.type}")
        choices = getattr(cls, "CHOICES", {}).get(key)
        if choices and value not in choices:
            raise LowbitError(f"option {key}={value!r} for {owner} must be one of {', '.join(choices)}")


def options_of(cls: type, args: dict):
    """The instance of `cls` that `args` describes (keys of other classes are skipped)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in args.items() if k in names})


def check_method_args(spec, method) -> None:
    """spec.method_args against the walk's options and `method`'s own (Method.options)."""
    classes = [WalkOptions] + ([method.options] if getattr(method, "options", None) else [])
    check_options(spec.method_args, classes, f"method {spec.method!r}")
