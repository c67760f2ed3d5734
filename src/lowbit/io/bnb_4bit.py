"""bitsandbytes 4-bit checkpoints (NF4 or FP4), as transformers loads them with BitsAndBytesConfig.

On disk, per quantized Linear `name` (weight (out, in), n = out * in, blocks of B over the
flattened weight, nb = ceil(n / B)):
  name.weight                 uint8 (ceil(n / 2), 1)  two codes per byte, the first in the high nibble
  name.weight.absmax          uint8 (nb,) with double quantization, else float32 (nb,)
  name.weight.quant_map       float32 (16,)           the NF4 or FP4 code book
  name.weight.nested_absmax   float32 (ceil(nb / 256),)   double quantization only
  name.weight.nested_quant_map  float32 (256,)        the 8-bit dynamic code, double quantization only
  name.weight.quant_state.bitsandbytes__nf4 (or __fp4)  uint8    UTF-8 JSON: quant_type, blocksize, dtype,
                              shape, and nested_blocksize / nested_dtype / nested_offset
config.json quantization_config: quant_method "bitsandbytes", load_in_4bit, bnb_4bit_quant_type
"nf4" or "fp4" (one per model), bnb_4bit_use_double_quant, llm_int8_skip_modules (the Linears left in float).
The codes of lowbit's RTN on the nf4 grid equal bitsandbytes' own quantize_4bit (formats/nf4.py);
on fp4 they do except within 1e-4 of a midpoint, where bitsandbytes' CPU rounding uses its
4-decimal copy of the code book.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from lowbit.errors import LowbitError
from lowbit.formats.nf4 import QUANT_TYPES, NF4Tensor, code_book, dynamic_code
from lowbit.io.file_checks import check_safetensors, safetensors_shapes, stored_nbytes
from lowbit.spec import QuantSpec

BLOCKS = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # block sizes bitsandbytes' quantize_4bit takes
STATE_KEYS = {f"weight.quant_state.bitsandbytes__{t}": t for t in QUANT_TYPES}
SUFFIXES = ("weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map",
            *STATE_KEYS)


def _state_owner(key: str) -> str | None:
    """The module whose quant_state this key is, or None."""
    return next((key[: -len(s) - 1] for s in STATE_KEYS if key.endswith("." + s)), None)


def fit_layout(name: str, spec: QuantSpec, shape: tuple) -> QuantSpec:
    if spec.group_size not in BLOCKS:
        raise LowbitError(f"bitsandbytes stores NF4 blocks of {', '.join(map(str, BLOCKS))} weights, not "
                          f"{spec.group_size}: use --group-size 64")
    return spec


def _json_tensor(d: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(d).encode("utf-8")), dtype=torch.uint8)


def _tensor_json(t: torch.Tensor) -> dict:
    return json.loads(bytes(t.tolist()).decode("utf-8"))


def pack_tensor(name: str, qt: NF4Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    flat = qt.codes.reshape(-1)
    if flat.numel() % 2:
        flat = torch.nn.functional.pad(flat, (0, 1))
    packed = ((flat[::2] << 4) | flat[1::2]).to(torch.uint8).reshape(-1, 1)
    state = {"quant_type": qt.quant_type, "blocksize": qt.block, "dtype": str(dtype).removeprefix("torch."),
             "shape": list(qt.shape)}
    d = {f"{name}.weight": packed, f"{name}.weight.quant_map": code_book(qt.quant_type)}
    if qt.double_quant:
        state.update(nested_blocksize=qt.nested_block, nested_dtype="float32", nested_offset=qt.offset.item())
        d.update({f"{name}.weight.absmax": qt.qabsmax, f"{name}.weight.nested_absmax": qt.absmax2,
                  f"{name}.weight.nested_quant_map": dynamic_code()})
    else:
        d[f"{name}.weight.absmax"] = qt.absmax.float()
    d[f"{name}.weight.quant_state.bitsandbytes__{qt.quant_type}"] = _json_tensor(state)
    return d


def quantization_config(tensors: dict, ignore: list[str]) -> dict:
    double = {bool(qt.double_quant) for qt in tensors.values()}
    if len(double) > 1:
        raise ValueError("bitsandbytes records double quantization once per model: use one setting for all Linears")
    kinds = {qt.quant_type for qt in tensors.values()}
    if len(kinds) > 1:
        raise ValueError("bitsandbytes records one 4-bit code per model: use --grid nf4 or fp4 for all Linears")
    return {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
            "bnb_4bit_quant_type": kinds.pop() if kinds else "nf4",
            "bnb_4bit_use_double_quant": double.pop() if double else True,
            "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "uint8",
            "llm_int8_skip_modules": sorted(ignore), "llm_int8_threshold": 6.0,
            "llm_int8_has_fp16_weight": False, "llm_int8_enable_fp32_cpu_offload": False}


def detect(qconfig: dict) -> bool:
    return qconfig.get("quant_method") == "bitsandbytes" and bool(qconfig.get("load_in_4bit"))


def unpack_tensor(name: str, t: dict[str, torch.Tensor]) -> NF4Tensor:
    key = next(k for k in STATE_KEYS if k in t)
    state = _tensor_json(t[key])
    kind = state.get("quant_type")
    if kind != STATE_KEYS[key]:
        raise LowbitError(f"{name}: its quant_state says {kind!r} under {key}: the file is inconsistent, "
                          "write it again")
    quant_map = t.get("weight.quant_map")
    if quant_map is not None and not torch.allclose(quant_map.float(), code_book(kind), rtol=0, atol=1e-4):
        raise LowbitError(f"{name}: its quant_map is not bitsandbytes' {kind} code book: lowbit reads only those")
    out, inp = (int(v) for v in state["shape"])
    packed = t["weight"].reshape(-1)
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[: out * inp].reshape(out, inp)
    block = int(state["blocksize"])
    if "nested_offset" in state:
        return NF4Tensor(codes, None, t["weight.absmax"].to(torch.uint8), t["weight.nested_absmax"].float(),
                         torch.tensor(float(state["nested_offset"]), dtype=torch.float32), block,
                         int(state["nested_blocksize"]), kind)
    return NF4Tensor(codes, t["weight.absmax"].float(), None, None, None, block, quant_type=kind)


def read_tensors(model_dir: Path, qconfig: dict):
    modules: dict[str, dict[str, torch.Tensor]] = {}
    plain: dict[str, torch.Tensor] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        check_safetensors(f)
        with safe_open(str(f), framework="pt") as fh:
            keys = list(fh.keys())
            owners = {o for o in map(_state_owner, keys) if o is not None}
            for k in keys:
                mod = next((m for m in (k.rsplit(".", n)[0] for n in (1, 2, 3)) if m in owners), None)
                if mod is not None and k[len(mod) + 1:] in SUFFIXES:
                    modules.setdefault(mod, {})[k[len(mod) + 1:]] = fh.get_tensor(k)
                else:
                    plain[k] = fh.get_tensor(k)
    return {mod: unpack_tensor(mod, t) for mod, t in modules.items()}, plain


def stored_bits(model_dir: Path, qconfig: dict) -> float | None:
    """Bits per weight of the quantized Linears, from the stored tensors' sizes."""
    stored = weights = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        head = safetensors_shapes(f)
        keys = {_state_owner(k): k for k in head if _state_owner(k) is not None}
        owners = set(keys)
        with safe_open(str(f), framework="pt") as fh:
            for mod in owners:
                state = _tensor_json(fh.get_tensor(keys[mod]))
                weights += int(state["shape"][0]) * int(state["shape"][1])
        for k, (dtype, shape) in head.items():
            mod = next((m for m in owners if k.startswith(m + ".") and k[len(m) + 1:] in SUFFIXES), None)
            if mod is not None:
                stored += 8 * stored_nbytes(dtype, shape)
    return stored / weights if weights else None
