"""Recipes: a whole quantization as a file (YAML or TOML), as llama.cpp's --tensor-type and the
peers' recipes do, read by `lowbit quantize --recipe FILE` and written beside every output as
recipe.yaml, so that `--recipe OUT/recipe.yaml` makes the same bytes again.

    method: gptq                  # any registered method
    grid: int                     # int, nf4, fp4, fp8, nvfp4, mxfp4
    bits: 4
    group_size: 128               # -1 per channel, 0 per tensor
    symmetric: true
    method_args: {damp_percent: 0.01, act_order: true}
    transforms: [smooth]          # in order; today: smooth (per-layer smoothing)
    format: compressed-tensors    # or gptq, gptq-v2, awq, bnb, gguf (with gguf_type)
    calibration: {nsamples: 128, seqlen: 512, seed: 0}
    overrides:                    # per module, by regex on the module name; later ones win
      - {match: 'model\\.layers\\.\\d+\\.mlp\\.down_proj', bits: 8, group_size: -1}
      - {match: 'model\\.layers\\.0\\..*', keep: float}

Errors are one line, before any weight is read: an unknown key names the nearest valid one, a
regex that does not compile or matches no Linear of the model, bits a format cannot hold.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import replace
from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.spec import QuantSpec

RECIPE_FILE = "recipe.yaml"
SPEC_KEYS = ("method", "grid", "bits", "group_size", "symmetric", "clip", "double_quant", "act", "method_args")
TOP_KEYS = SPEC_KEYS + ("transforms", "format", "gguf_type", "calibration", "overrides", "ignore")
OVERRIDE_KEYS = ("match", "bits", "group_size", "symmetric", "clip", "grid", "double_quant", "keep")
CALIBRATION_KEYS = ("nsamples", "seqlen", "seed", "source")
TRANSFORMS = ("smooth",)


def _nearest(key: str, valid, where: str) -> LowbitError:
    near = difflib.get_close_matches(str(key), list(valid), n=1)
    hint = f"did you mean {near[0]!r}?" if near else f"use one of {', '.join(valid)}"
    return LowbitError(f"unknown recipe key {key!r} in {where}: {hint}")


def _check_keys(d: dict, valid, where: str) -> None:
    if not isinstance(d, dict):
        raise LowbitError(f"{where} must be a mapping of keys to values, not {type(d).__name__}")
    for k in d:
        if k not in valid:
            raise _nearest(k, valid, where)


class Recipe:
    """spec (QuantSpec with overrides and ignores), format, gguf_type, calibration settings."""

    def __init__(self, spec: QuantSpec, format: str = "compressed-tensors", gguf_type: str | None = None,
                 calibration: dict | None = None, source: str | None = None):
        self.spec, self.format, self.gguf_type = spec, format, gguf_type
        self.calibration = dict(calibration or {})
        self.source = source

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, d: dict, source: str = "the recipe") -> "Recipe":
        _check_keys(d, TOP_KEYS, source)
        kw = {k: d[k] for k in SPEC_KEYS if k in d and d[k] is not None}
        args = dict(kw.pop("method_args", {}) or {})
        transforms = d.get("transforms") or []
        if not isinstance(transforms, list):
            raise LowbitError(f"transforms in {source} must be a list such as [smooth]")
        for t in transforms:
            if t not in TRANSFORMS:
                raise _nearest(t, TRANSFORMS, f"{source} transforms")
        if "transforms" in d:  # given: exactly these; absent: the format's own choice (smooth auto)
            args["smooth"] = "on" if "smooth" in transforms else "off"
        args.setdefault("smooth", "auto")
        calibration = d.get("calibration") or {}
        _check_keys(calibration, CALIBRATION_KEYS, f"{source} calibration")
        ignore = list(QuantSpec().ignore) + [_pattern(p, source) for p in d.get("ignore") or []]
        overrides = []
        for i, o in enumerate(d.get("overrides") or []):
            where = f"{source} overrides[{i}]"
            if isinstance(o, dict) and "method" in o:
                raise LowbitError(f"{where}: one method per recipe (per-module methods are not supported yet): "
                                  "drop 'method' from the override")
            _check_keys(o, OVERRIDE_KEYS, where)
            if "match" not in o:
                raise LowbitError(f"{where} has no 'match': give the regex of the modules it applies to")
            pattern = _pattern(o["match"], where)
            changes = {k: v for k, v in o.items() if k not in ("match", "keep")}
            if "keep" in o:
                if o["keep"] != "float" or changes:
                    raise LowbitError(f"{where}: keep takes 'float' and nothing beside it (got keep={o['keep']!r})")
                ignore.append(pattern)
                continue
            overrides.append((pattern, changes))
        try:
            spec = QuantSpec(**kw, method_args=args, ignore=tuple(ignore), overrides=tuple(overrides))
            for pattern, changes in overrides:  # each override's spec is valid on its own
                replace(spec, **changes, overrides=())
        except TypeError as e:
            raise LowbitError(f"{source}: {e}") from None
        return cls(spec, d.get("format") or "compressed-tensors", d.get("gguf_type"), calibration, source)

    @classmethod
    def from_run(cls, meta: dict) -> "Recipe":
        """The recipe of a run from what it records (a summary or lowbit.json: spec, format, calibration)."""
        return cls(QuantSpec.from_dict(meta["spec"]), meta.get("format") or "compressed-tensors",
                   meta.get("gguf_type"), meta.get("calibration"))

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        p = Path(path).expanduser()
        if p.is_dir() and (p / RECIPE_FILE).is_file():
            p = p / RECIPE_FILE
        if not p.is_file():
            raise LowbitError(f"recipe {p} does not exist: give a .yaml or .toml recipe file")
        if p.suffix.lower() == ".gguf":  # a GGUF lowbit wrote keeps its recipe in its metadata
            from lowbit.io.gguf_reader import gguf_facts
            text = gguf_facts(p).get("recipe")
            if not text:
                raise LowbitError(f"{p} records no lowbit recipe (not written by lowbit, or by an older one)")
            import yaml
            return cls.from_dict(yaml.safe_load(text), str(p))
        text = p.read_text()
        try:
            if p.suffix.lower() == ".toml":
                import tomllib
                d = tomllib.loads(text)
            else:
                import yaml
                d = yaml.safe_load(text)
        except Exception as e:  # noqa: BLE001 - any parse error is the file's
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LowbitError(f"recipe {p} does not parse ({first}): fix its syntax") from None
        if not isinstance(d, dict):
            raise LowbitError(f"recipe {p} is not a mapping of keys: see docs/usage.md for the layout")
        return cls.from_dict(d, str(p))

    # ------------------------------------------------------------------ checking against a model
    def check_matches(self, module_names) -> None:
        """Every override and added ignore regex matches at least one Linear of the model."""
        names = list(module_names)
        default_ignore = set(QuantSpec().ignore)
        patterns = [p for p, _ in self.spec.overrides] + [p for p in self.spec.ignore if p not in default_ignore]
        for p in patterns:
            rx = re.compile(p[3:])
            if not any(rx.fullmatch(n) for n in names):
                example = names[0] if names else "no Linear at all"
                raise LowbitError(f"recipe {self.source}: {p[3:]!r} matches no Linear of the model (they are named "
                                  f"like {example!r}): fix the regex or drop the override")

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict:
        s = self.spec.to_dict()
        d = {k: s[k] for k in SPEC_KEYS if k != "method_args"}
        args = dict(s["method_args"])
        smooth = args.pop("smooth", "auto")
        d["method_args"] = args
        if smooth != "auto":  # absent: the format's own choice
            d["transforms"] = ["smooth"] if smooth == "on" else []
        d["format"] = self.format
        if self.gguf_type:
            d["gguf_type"] = self.gguf_type
        cal = {k: v for k, v in self.calibration.items() if k in CALIBRATION_KEYS}
        if str(cal.get("source", "")).startswith("default"):  # the built-in text: no file to name
            del cal["source"]
        if cal:
            d["calibration"] = cal
        default_ignore = set(QuantSpec().ignore)
        keep = [p for p in s["ignore"] if p not in default_ignore]
        d["overrides"] = [{"match": p[3:], **c} for p, c in s["overrides"]] + [{"match": p[3:], "keep": "float"}
                                                                              for p in keep]
        return d

    def to_yaml(self) -> str:
        import yaml
        head = "# lowbit recipe: lowbit quantize MODEL --recipe THIS_FILE -o OUT makes the same bytes\n"
        return head + yaml.safe_dump(json.loads(json.dumps(self.to_dict())), sort_keys=False)


def _pattern(p, where: str) -> str:
    """A recipe regex as a spec pattern ("re:..."), compiled once to check it."""
    if not isinstance(p, str) or not p:
        raise LowbitError(f"{where}: a match must be a regex string, not {p!r}")
    body = p[3:] if p.startswith("re:") else p
    try:
        re.compile(body)
    except re.error as e:
        raise LowbitError(f"{where}: {body!r} is not a valid regex ({e}): fix it") from None
    return "re:" + body

