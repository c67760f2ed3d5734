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

FP8 weights ("float-quantized", the layout of vLLM's FP8 checkpoints):
  name.weight             float8_e4m3fn (out, in)
  name.weight_scale       float, (1,) per tensor, (out, 1) per channel, or
                          (ceil(out / B), ceil(in / B)) per B x B block (block_structure [B, B])

NVFP4 weights ("nvfp4-pack-quantized", formats/nvfp4.py):
  name.weight_packed      uint8 (out, in / 2)   two e2m1 codes per byte, the first in the low nibble
  name.weight_scale       float8_e4m3fn (out, in / 16)
  name.weight_global_scale  float32 (1,)

W8A8 ("int-quantized": int8 weights per output channel, dynamic per-token int8 inputs, as vLLM loads it):
  name.weight             int8 (out, in)   code - 128
  name.weight_scale       (out, 1)

MXFP4 weights ("mxfp4-pack-quantized", formats/mxfp4.py):
  name.weight_packed      uint8 (out, in / 2)   as NVFP4
  name.weight_scale       uint8 (out, in / 32)  e8m0 exponents, scale 2 ** (e - 127)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from lowbit.errors import LowbitError
from lowbit.formats import FP8Tensor, QuantizedTensor, column_groups, pack_words, unpack_words
from lowbit.io.file_checks import check_packed, safetensors_shapes, stored_nbytes
from lowbit.io.gptq_v1 import split_modules  # every safetensors tensor, split by module suffix
from lowbit.spec import QuantSpec

FORMAT = "pack-quantized"
FLOAT_FORMAT = "float-quantized"
NVFP4_FORMAT = "nvfp4-pack-quantized"
MXFP4_FORMAT = "mxfp4-pack-quantized"
INT_FORMAT = "int-quantized"
CT_VERSION = "0.12.2"  # the config schema we write; loads with compressed-tensors 0.10-0.13


def fit_layout(name: str, spec: QuantSpec, shape: tuple) -> QuantSpec:
    """What compressed-tensors (0.20) can store: the largest group size <= the requested
    one that divides the row; act-order only with static groups (actorder "group", i.e. a
    per-column g_idx, was removed from the library)."""
    from dataclasses import replace
    if spec.grid in ("fp8", "nvfp4", "mxfp4"):
        return spec  # fp8: any tile, the library pads partial blocks itself; nvfp4 / mxfp4: blocks of 16 / 32
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


def weight_args(qt) -> dict:
    if qt.kind == "mxfp4":
        return {"num_bits": 4, "type": "float", "symmetric": True, "group_size": 32, "strategy": "group",
                "dynamic": False, "scale_dtype": "torch.uint8", "zp_dtype": "torch.uint8", "observer": "minmax"}
    if qt.kind == "nvfp4":
        return {"num_bits": 4, "type": "float", "symmetric": True, "group_size": 16,
                "strategy": "tensor_group", "dynamic": False, "scale_dtype": "torch.float8_e4m3fn",
                "observer": "static_minmax"}
    if qt.kind == "fp8":
        return {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None,
                "strategy": _strategy(qt.block).replace("group", "block"),
                "block_structure": [qt.block, qt.block] if qt.block > 0 else None,
                "dynamic": False, "actorder": None, "observer": "minmax", "observer_kwargs": {}}
    return {
        "num_bits": qt.bits, "type": "int", "symmetric": qt.symmetric,
        "group_size": qt.group_size if qt.group_size > 0 else None,
        "strategy": _strategy(qt.group_size), "block_structure": None,
        "dynamic": False, "actorder": None,
        "observer": "minmax", "observer_kwargs": {},
    }


# input_activations of a config group, by lowbit's activation scheme (formats/act_quant.py)
ACT_ARGS = {"fp8-token": {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None,
                          "strategy": "token", "block_structure": None, "dynamic": True, "actorder": None,
                          "observer": None, "observer_kwargs": {}},
            "int8-token": {"num_bits": 8, "type": "int", "symmetric": True, "group_size": None,
                           "strategy": "token", "block_structure": None, "dynamic": True, "actorder": None,
                           "observer": None, "observer_kwargs": {}}}


def act_scheme(args: dict | None) -> str:
    """lowbit's name for a group's input_activations, or a one-line error for one it cannot run."""
    if not args:
        return "none"
    for name, ours in ACT_ARGS.items():
        if all(args.get(k) == ours[k] for k in ("num_bits", "type", "strategy", "dynamic")):
            return name
    raise LowbitError(f"input_activations {args.get('num_bits')}-bit {args.get('type')} {args.get('strategy')} "
                      f"(dynamic {args.get('dynamic')}) are not evaluated by lowbit yet: it runs dynamic "
                      "per-token FP8 or int8 activations")


def quantization_config(tensors: dict[str, QuantizedTensor], ignore: list[str]) -> dict:
    groups: dict[str, dict] = {}
    by_args: dict[str, list[str]] = {}
    for name, qt in tensors.items():
        key = {"weights": weight_args(qt), "act": getattr(qt, "act", "none")}
        by_args.setdefault(json.dumps(key, sort_keys=True), []).append(name)
    for i, (args, names) in enumerate(sorted(by_args.items(), key=lambda kv: -len(kv[1]))):
        key = json.loads(args)
        weights = key["weights"]
        groups[f"group_{i}"] = {"targets": sorted(names), "weights": weights,
                                "input_activations": ACT_ARGS.get(key["act"]), "output_activations": None,
                                "format": INT_FORMAT if key["act"] == "int8-token" else _group_format(weights)}
    formats = {g["format"] for g in groups.values()} or {FORMAT}
    return {
        "quant_method": "compressed-tensors", "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed", "config_groups": groups,
        "ignore": sorted(ignore), "kv_cache_scheme": None,
        "global_compression_ratio": None, "sparsity_config": {}, "version": CT_VERSION,
    }


def _group_format(weights: dict) -> str:
    if weights["type"] != "float":
        return FORMAT
    if weights["num_bits"] == 4:
        return MXFP4_FORMAT if weights["group_size"] == 32 else NVFP4_FORMAT
    return FLOAT_FORMAT


def _pack_fp4(c: torch.Tensor) -> torch.Tensor:
    return (c[:, 0::2] | (c[:, 1::2] << 4)).to(torch.uint8).contiguous()


def _unpack_fp4(name: str, packed: torch.Tensor, scale: torch.Tensor, block: int) -> torch.Tensor:
    """Codes (out, in) of weight_packed, once the block scales are checked to fit them."""
    out, half = packed.shape
    if tuple(scale.shape) != (out, 2 * half // block):
        raise LowbitError(f"{name}: weight_scale {tuple(scale.shape)} does not fit a ({out}, {2 * half}) "
                          f"weight in groups of {block}: the file is damaged")
    return torch.stack([packed & 0xF, packed >> 4], dim=2).reshape(out, 2 * half)


def pack_tensor(name: str, qt, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    if qt.kind == "mxfp4":
        return {f"{name}.weight_packed": _pack_fp4(qt.codes), f"{name}.weight_scale": qt.exponent.contiguous()}
    if qt.kind == "nvfp4":
        c = qt.codes
        return {f"{name}.weight_packed": _pack_fp4(c),
                f"{name}.weight_scale": qt.scale.contiguous(),
                f"{name}.weight_global_scale": qt.global_scale.float().reshape(1)}
    if qt.kind == "fp8":
        scale = qt.scale.reshape(1) if qt.block == 0 else qt.scale
        return {f"{name}.weight": qt.codes.contiguous(), f"{name}.weight_scale": scale.to(dtype).contiguous()}
    if qt.act == "int8-token":
        return {f"{name}.weight": qt.signed_codes().contiguous(), f"{name}.weight_scale": qt.scale.to(dtype).contiguous()}
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


def group_for(name: str, qconfig: dict) -> dict | None:
    for group in qconfig.get("config_groups", {}).values():
        if any(_matches(name, t) for t in group.get("targets", [])):
            return group
    for group in qconfig.get("config_groups", {}).values():
        if "Linear" in group.get("targets", []):
            return group
    return None


def args_for(name: str, qconfig: dict) -> dict | None:
    group = group_for(name, qconfig)
    return None if group is None else group["weights"]


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
    modules, plain = split_modules(model_dir, CT_SUFFIXES)
    tensors = {}
    for mod, t in modules.items():
        args = args_for(mod, qconfig)
        if args is not None and args.get("type") == "float" and int(args.get("num_bits", 8)) == 4:
            tensors[mod] = unpack_mxfp4(mod, t, args) if args.get("group_size") == 32 else unpack_nvfp4(mod, t, args)
            continue
        if args is not None and args.get("type") == "float" and "weight_packed" not in t:
            qt = unpack_float(mod, plain.pop(f"{mod}.weight", None), t["weight_scale"], args)
            qt.act = act_scheme(group_for(mod, qconfig).get("input_activations"))
            tensors[mod] = qt
            continue
        if args is not None and args.get("type") == "int" and "weight_packed" not in t:
            tensors[mod] = unpack_int8(mod, plain.pop(f"{mod}.weight", None), t["weight_scale"], args,
                                       act_scheme(group_for(mod, qconfig).get("input_activations")))
            continue
        if args is None or "weight_packed" not in t:
            raise ValueError(f"{mod}: no quantization args in config.json for its packed weight")
        check_packed(model_dir, mod, t, args)  # shapes agree before unpacking allocates
        tensors[mod] = unpack_tensor(mod, t, args)
    return tensors, plain


def unpack_int8(name: str, weight: torch.Tensor | None, scale: torch.Tensor, args: dict, act: str) -> QuantizedTensor:
    """QuantizedTensor from an int-quantized module (W8A8): int8 weight, a scale per output channel."""
    if weight is None or weight.dtype != torch.int8 or weight.ndim != 2:
        raise LowbitError(f"{name}: an int-quantized weight must be a 2-D int8 tensor (got "
                          f"{None if weight is None else weight.dtype}): the file is damaged")
    if int(args.get("num_bits", 8)) != 8 or args.get("strategy") != "channel" or not args.get("symmetric", True):
        raise LowbitError(f"{name}: lowbit reads int-quantized weights as symmetric int8 per channel, not "
                          f"{args.get('num_bits')}-bit {args.get('strategy')}")
    return QuantizedTensor.from_signed_int8(weight, scale, act)


def unpack_float(name: str, weight: torch.Tensor | None, scale: torch.Tensor, args: dict) -> FP8Tensor:
    """FP8Tensor from a float-quantized module's weight and weight_scale."""
    if weight is None or weight.dtype != torch.float8_e4m3fn or weight.ndim != 2:
        raise LowbitError(f"{name}: a float-quantized weight must be a 2-D float8_e4m3fn tensor "
                          f"(got {None if weight is None else weight.dtype}): the file is not compressed-tensors FP8")
    strategy = args.get("strategy") or "tensor"
    if int(args.get("num_bits", 8)) != 8 or strategy not in ("tensor", "channel", "block"):
        raise LowbitError(f"{name}: lowbit reads 8-bit float weights per tensor, channel or block, "
                          f"not {args.get('num_bits')}-bit {strategy}")
    block = {"tensor": 0, "channel": -1}.get(strategy) or int((args.get("block_structure") or [0])[0])
    from lowbit.formats.fp8 import tile_shape

    want = tile_shape(tuple(weight.shape), block)
    if scale.numel() != want[0] * want[1]:
        raise LowbitError(f"{name}: weight_scale has {scale.numel()} values, a {strategy} scale of a "
                          f"{tuple(weight.shape)} weight needs {want[0] * want[1]}: the file is damaged")
    return FP8Tensor(weight, scale.float().reshape(want), block)


def unpack_nvfp4(name: str, t: dict, args: dict):
    from lowbit.formats.nvfp4 import BLOCK, NVFP4Tensor

    if args.get("strategy") != "tensor_group" or args.get("group_size") != BLOCK or "weight_global_scale" not in t:
        raise LowbitError(f"{name}: lowbit reads FP4 weights as NVFP4 (tensor_group, groups of {BLOCK}, a global "
                          f"scale), not {args.get('strategy')} groups of {args.get('group_size')}")
    packed = t["weight_packed"]
    if packed.dtype != torch.uint8 or t["weight_scale"].dtype != torch.float8_e4m3fn:
        raise LowbitError(f"{name}: NVFP4 needs uint8 weight_packed and float8_e4m3fn weight_scale: the file is damaged")
    return NVFP4Tensor(_unpack_fp4(name, packed, t["weight_scale"], BLOCK), t["weight_scale"],
                       t["weight_global_scale"].float().reshape(1))


def unpack_mxfp4(name: str, t: dict, args: dict):
    from lowbit.formats.mxfp4 import BLOCK, MXFP4Tensor

    packed, scale = t["weight_packed"], t["weight_scale"]
    if args.get("strategy") != "group" or packed.dtype != torch.uint8 or scale.dtype != torch.uint8:
        raise LowbitError(f"{name}: MXFP4 needs group strategy, uint8 weight_packed and uint8 (e8m0) weight_scale "
                          f"(got {args.get('strategy')}, {packed.dtype}, {scale.dtype}): the file is damaged")
    return MXFP4Tensor(_unpack_fp4(name, packed, scale, BLOCK), scale)


def _detect(qconfig: dict) -> bool:
    return qconfig.get("quant_method") == "compressed-tensors"


CT_SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape",
               "weight_global_scale")


def stored_bits(path: Path, qconfig: dict | None = None) -> float | None:
    """Bits per weight of the quantized Linears, from the stored tensors' sizes."""
    stored = weights = 0
    for f in sorted(path.glob("*.safetensors")):
        head = safetensors_shapes(f)
        for k, (dtype, shape) in head.items():  # FP8 and W8A8 int8 weights: stored in their own shape
            mod = k[: -len(".weight")]
            if k.endswith(".weight") and dtype in ("F8_E4M3", "I8") and f"{mod}.weight_scale" in head:
                weights += shape[0] * shape[1]
                stored += 8 * (stored_nbytes(dtype, shape) + stored_nbytes(*head[f"{mod}.weight_scale"]))
        fp4 = {k[: -len(".weight_packed")] for k, (dtype, _) in head.items()
               if k.endswith(".weight_packed") and dtype == "U8"}  # NVFP4 / MXFP4: two codes per byte
        for mod in fp4:
            out, half = head[f"{mod}.weight_packed"][1]
            weights += out * 2 * half
            stored += 8 * sum(stored_nbytes(*head[f"{mod}.{x}"]) for x in CT_SUFFIXES if f"{mod}.{x}" in head)
        head = {k: v for k, v in head.items() if k.rpartition(".")[0] not in fp4}
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
                                 _detect, read_tensors, stored_bits=stored_bits, holds=("int", "fp8", "nvfp4", "mxfp4"),
                                 acts=("none", "fp8-token", "int8-token")))
