"""compressed-tensors "pack-quantized" checkpoints, as transformers and vLLM load them.

On disk, per quantized Linear `name` (names on the module equal names on disk):
  name.weight_packed      int32 (out, ceil(in / (32 // bits)))  codes q - 2**(b-1) + offset
                          = our unsigned q, 32 // bits per word, code i at bit i * bits
  name.weight_scale       (out, ngroups) in the model dtype (channel: (out, 1); tensor: (1,))
  name.weight_zero_point  asymmetric only: int32 (ceil(out / (32 // bits)), ngroups),
                          packed along the output axis
  name.weight_g_idx       int32 (in,) with act-order
  name.weight_shape       int32 [out, in]
The reference library refuses group sizes that do not divide the row, so fit_layout()
picks the largest group size that does, and the change is recorded.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from lowbit.formats import QuantizedTensor, column_groups, pack_words, unpack_words
from lowbit.io.file_checks import check_packed, check_safetensors, safetensors_shapes, stored_nbytes
from lowbit.spec import QuantSpec

FORMAT = "pack-quantized"
CT_VERSION = "0.12.2"  # the config schema we write; loads with compressed-tensors 0.10-0.13


def fit_layout(name: str, spec: QuantSpec, shape: tuple) -> QuantSpec:
    """What compressed-tensors (0.20) can store: the largest group size <= the requested
    one that divides the row; act-order only with static groups (actorder "group", i.e. a
    per-column g_idx, was removed from the library)."""
    from dataclasses import replace
    in_features = shape[1]
    g = spec.group_size
    if g > 0 and in_features % g:
        g = in_features if g >= in_features else max(d for d in range(1, g + 1) if in_features % d == 0)
        spec = replace(spec, group_size=g)
    args = spec.method_args
    if args.get("act_order") and not args.get("static_groups") and spec.group_size > 0:
        spec = replace(spec, method_args={**args, "static_groups": True})
    return spec


def _strategy(group_size: int) -> str:
    return "group" if group_size > 0 else ("channel" if group_size == -1 else "tensor")


def weight_args(qt: QuantizedTensor) -> dict:
    return {
        "num_bits": qt.bits, "type": "int", "symmetric": qt.symmetric,
        "group_size": qt.group_size if qt.group_size > 0 else None,
        "strategy": _strategy(qt.group_size), "block_structure": None,
        "dynamic": False, "actorder": None,
        "observer": "minmax", "observer_kwargs": {},
    }


def quantization_config(tensors: dict[str, QuantizedTensor], ignore: list[str]) -> dict:
    groups: dict[str, dict] = {}
    by_args: dict[str, list[str]] = {}
    for name, qt in tensors.items():
        by_args.setdefault(json.dumps(weight_args(qt), sort_keys=True), []).append(name)
    for i, (args, names) in enumerate(sorted(by_args.items(), key=lambda kv: -len(kv[1]))):
        groups[f"group_{i}"] = {"targets": sorted(names), "weights": json.loads(args),
                                "input_activations": None, "output_activations": None,
                                "format": FORMAT}
    return {
        "quant_method": "compressed-tensors", "format": FORMAT,
        "quantization_status": "compressed", "config_groups": groups,
        "ignore": sorted(ignore), "kv_cache_scheme": None,
        "global_compression_ratio": None, "sparsity_config": {}, "version": CT_VERSION,
    }


def pack_tensor(name: str, qt: QuantizedTensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    if qt.act_order:
        raise ValueError(f"{name}: compressed-tensors no longer loads a per-column g_idx; "
                         "quantize with fit_layout (act-order with static groups)")
    out, inp = qt.shape
    d = {f"{name}.weight_packed": pack_words(qt.q, qt.bits, dim=1),
         f"{name}.weight_shape": torch.tensor([out, inp], dtype=torch.int32)}
    scale = qt.scale.to(dtype)
    d[f"{name}.weight_scale"] = scale.reshape(1) if qt.group_size == 0 else scale.contiguous()
    if not qt.symmetric:
        if qt.group_size == 0:  # tensor strategy keeps a plain signed int8 zero point
            d[f"{name}.weight_zero_point"] = (qt.zero.reshape(1) - 2 ** (qt.bits - 1)).to(torch.int8)
        else:
            d[f"{name}.weight_zero_point"] = pack_words(qt.zero.to(torch.uint8), qt.bits, dim=0)
    return d


def _matches(name: str, target: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return name == target


def args_for(name: str, qconfig: dict) -> dict | None:
    for group in qconfig.get("config_groups", {}).values():
        if any(_matches(name, t) for t in group.get("targets", [])):
            return group["weights"]
    for group in qconfig.get("config_groups", {}).values():
        if "Linear" in group.get("targets", []):
            return group["weights"]
    return None


def unpack_tensor(name: str, t: dict[str, torch.Tensor], args: dict) -> QuantizedTensor:
    """QuantizedTensor from the stored tensors of one module (`t` keyed by suffix)."""
    bits = int(args["num_bits"])
    out, inp = (int(v) for v in t["weight_shape"].tolist())
    q = unpack_words(t["weight_packed"], bits, inp, dim=1)
    strategy = args.get("strategy") or "tensor"
    group_size = {"channel": -1, "tensor": 0}.get(strategy, args.get("group_size") or -1)
    scale = t["weight_scale"].float().reshape(-1, 1) if strategy == "tensor" else t["weight_scale"].float()
    if args.get("symmetric", True):
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    elif strategy == "tensor":
        zero = t["weight_zero_point"].float().reshape(1, 1) + 2 ** (bits - 1)
    else:
        zero = unpack_words(t["weight_zero_point"], bits, out, dim=0).float()
    g_idx = t.get("weight_g_idx")
    act_order = g_idx is not None
    g_idx = g_idx.long() if act_order else column_groups(inp, group_size)
    return QuantizedTensor(q, scale, zero, g_idx, bits, group_size,
                           bool(args.get("symmetric", True)), act_order)


def read_tensors(model_dir: Path, qconfig: dict) -> tuple[dict[str, QuantizedTensor], dict[str, torch.Tensor]]:
    """Quantized modules and plain tensors of a compressed-tensors checkpoint."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    raw: dict[str, torch.Tensor] = {}
    for f in files:
        check_safetensors(f)  # bounds-checked before the library parses it
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                raw[k] = fh.get_tensor(k)
    suffixes = ("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape")
    modules: dict[str, dict[str, torch.Tensor]] = {}
    plain: dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        mod, _, suffix = k.rpartition(".")
        if suffix in suffixes:
            modules.setdefault(mod, {})[suffix] = v
        else:
            plain[k] = v
    tensors = {}
    for mod, t in modules.items():
        args = args_for(mod, qconfig)
        if args is None or "weight_packed" not in t:
            raise ValueError(f"{mod}: no quantization args in config.json for its packed weight")
        check_packed(model_dir, mod, t, args)  # shapes agree before unpacking allocates
        tensors[mod] = unpack_tensor(mod, t, args)
    return tensors, plain


def _detect(qconfig: dict) -> bool:
    return qconfig.get("quant_method") == "compressed-tensors"


CT_SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape")


def stored_bits(path: Path, qconfig: dict | None = None) -> float | None:
    """Bits per weight of the quantized Linears, from the stored tensors' sizes."""
    stored = weights = 0
    for f in sorted(path.glob("*.safetensors")):
        head = safetensors_shapes(f)
        shapes = [k for k in head if k.rpartition(".")[2] == "weight_shape"]
        if not shapes:
            continue
        with safe_open(str(f), framework="pt") as fh:
            for k in shapes:
                out, inp = (int(v) for v in fh.get_tensor(k).tolist())
                weights += out * inp
        stored += 8 * sum(stored_nbytes(*head[k]) for k in head if k.rpartition(".")[2] in CT_SUFFIXES)
    return stored / weights if weights else None



from lowbit.io.format_registry import CheckpointFormat, register_format  # noqa: E402

register_format(CheckpointFormat("compressed-tensors", fit_layout, pack_tensor, quantization_config,
                                 _detect, read_tensors, stored_bits=stored_bits))
