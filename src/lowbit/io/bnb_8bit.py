"""bitsandbytes 8-bit checkpoints (LLM.int8()), as transformers loads them with BitsAndBytesConfig.

On disk, per quantized Linear `name` (weight (out, in)):
  name.weight   int8 (out, in)   round(w * 127 / SCB): int8 codes per output row
  name.SCB      float32 (out,)   the row's absmax (scale SCB / 127)
config.json quantization_config: quant_method "bitsandbytes", load_in_8bit, llm_int8_threshold 6.0
(input features with |x| >= 6 multiplied in float at run time), llm_int8_skip_modules.
The codes are lowbit's int8 per-channel symmetric grid (scale absmax / 127, code - 128), so
SCB = 127 * scale; lowbit runs them with the same decomposition (runtime/int8_linear.py).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from lowbit.errors import LowbitError
from lowbit.formats import QuantizedTensor
from lowbit.io.file_checks import safetensors_shapes, stored_nbytes
from lowbit.io.gptq_v1 import split_modules
from lowbit.runtime.int8_linear import QMAX, THRESHOLD
from lowbit.spec import QuantSpec

ACT = "llm-int8"


def fit_layout(name: str, spec: QuantSpec, shape: tuple) -> QuantSpec:
    if (spec.bits, spec.group_size, spec.symmetric) != (8, -1, True):
        raise LowbitError(f"bitsandbytes 8-bit stores int8 codes with one scale per output row, not {spec.bits}-bit "
                          f"group size {spec.group_size}: use --method llm-int8 (or --bits 8 --group-size -1 --sym)")
    return spec if spec.act == ACT else replace(spec, act=ACT)  # transformers runs every such file as LLM.int8()


def pack_tensor(name: str, qt: QuantizedTensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": qt.signed_codes().contiguous(),
            f"{name}.SCB": (qt.scale.float().reshape(-1) * QMAX).contiguous()}


def quantization_config(tensors: dict, ignore: list[str]) -> dict:
    return {"quant_method": "bitsandbytes", "load_in_8bit": True, "load_in_4bit": False,
            "llm_int8_threshold": THRESHOLD, "llm_int8_skip_modules": sorted(ignore),
            "llm_int8_has_fp16_weight": False, "llm_int8_enable_fp32_cpu_offload": False,
            "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False,
            "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "uint8"}


def detect(qconfig: dict) -> bool:
    return qconfig.get("quant_method") == "bitsandbytes" and bool(qconfig.get("load_in_8bit"))


def unpack_tensor(name: str, weight: torch.Tensor | None, scb: torch.Tensor, threshold: float) -> QuantizedTensor:
    if weight is None or weight.dtype != torch.int8 or weight.ndim != 2 or tuple(scb.shape) != (weight.shape[0],):
        got = "no weight" if weight is None else f"{weight.dtype} {tuple(weight.shape)}"
        raise LowbitError(f"{name}: an 8-bit bitsandbytes weight is int8 (out, in) with SCB (out,), got "
                          f"{got} and SCB {tuple(scb.shape)}: the file is damaged")
    if threshold != THRESHOLD:
        raise LowbitError(f"llm_int8_threshold {threshold} is not evaluated by lowbit yet (it runs {THRESHOLD})")
    return QuantizedTensor.from_signed_int8(weight, scb.float() / QMAX, ACT)


def read_tensors(model_dir: Path, qconfig: dict):
    threshold = float(qconfig.get("llm_int8_threshold", THRESHOLD))
    modules, plain = split_modules(model_dir, ("SCB", "weight_format"))  # weight_format: older bitsandbytes' marker
    tensors = {m: unpack_tensor(m, plain.pop(f"{m}.weight", None), t["SCB"], threshold)
               for m, t in sorted(modules.items()) if "SCB" in t}
    return tensors, plain


def stored_bits(model_dir: Path, qconfig: dict) -> float | None:
    stored = weights = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        head = safetensors_shapes(f)
        for k, (dtype, shape) in head.items():
            if k.endswith(".SCB"):
                w = head[k[: -len(".SCB")] + ".weight"]
                weights += w[1][0] * w[1][1]
                stored += 8 * (stored_nbytes(*w) + stored_nbytes(dtype, shape))
    return stored / weights if weights else None
