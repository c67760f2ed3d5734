"""The layer walk onto llama.cpp's block grids, written as one GGUF file.

gguf_mixes.plan_types names the GGML type of every tensor for a file type ("Q4_K_M"), by
llama.cpp's rules; the walk's fit_layout hook puts that type into each Linear's spec
(spec.ggml_type), so the method (rtn: llama.cpp's own rounding; gptq: GPTQ on the block grids,
methods/ggml_grid.py) returns exact block bytes and the weights they decode to, which the walk
propagates to later layers. The bytes go to write_gguf(blocks=...); tensors the walk does not
quantize (token embeddings, which SmolLM2 ties to the output matrix) are quantized by the
writer as llama.cpp does. Same types per tensor as llama-quantize, so the same file size.
With calibration, each layer is first smoothed (transform hook, transforms/smooth.py): exact
per-channel rescaling chosen against llama.cpp's rounding of the weights and of the input rows
its dot products quantize (formats/ggml_activations.py); the scales live in the F32 norms.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
from gguf import GGMLQuantizationType as T

from lowbit.errors import LowbitError
from lowbit.formats.ggml_activations import input_rounding
from lowbit.formats.ggml_blocks import FLOAT_TYPES
from lowbit.io.gguf_mixes import parse_file_type, plan_types
from lowbit.io.gguf_writer import write_gguf
from lowbit.calibration.hessian import HessianObserver
from lowbit.methods.ggml_grid import quantize_on_ggml_grid, round_ggml
from lowbit.pipeline.sequential import quantize_model, target_linears
from lowbit.pipeline.smoothing import check_smooth, smoothing_transform
from lowbit.transforms.smooth import ALPHAS

GGUF_METHODS = ("rtn", "gptq")  # methods that choose codes on GGML block grids


def check_gguf_request(file_type: str, method: str) -> None:
    """One-line errors before any loading: unknown file type, or a method without GGML grids."""
    parse_file_type(file_type)
    if method not in GGUF_METHODS:
        raise LowbitError(f"method {method!r} cannot write GGUF yet: use --method "
                          + " or ".join(GGUF_METHODS) + " with --format gguf")


def _llamacpp_rounding(qtype: T):
    """(weight rounding, input rounding) of a Linear stored as qtype and run by llama.cpp."""
    if qtype in FLOAT_TYPES:
        cast = input_rounding(qtype)
        return (cast or (lambda W: W)), cast
    return (lambda W: round_ggml(W, qtype).values.to(W.device)), input_rounding(qtype)


def gguf_smoothing(model, spec, plan: dict[str, T], calibration):
    """The walk's transform (transforms/smooth.py) for a GGUF file: per-channel smoothing of
    each layer's norm -> q/k/v, norm -> gate/up and up -> down inputs, searched against what
    llama.cpp computes from the file -- the planned weight types' rounding and the rounding of
    every input row that the dot products with those types do. None: no calibration, or
    method_args smooth "off" (pipeline/smoothing.py)."""
    def rounding_for(layer, layer_name):
        out = {}
        for name, module in layer.named_modules():
            qtype = plan.get(f"{layer_name}.{name}.weight")
            if isinstance(module, torch.nn.Linear) and qtype is not None:
                out[name] = _llamacpp_rounding(qtype)
        return out
    wanted = calibration is not None and check_smooth(spec.method_args.get("smooth", "auto")) != "off"
    return smoothing_transform(model, spec, rounding_for, ALPHAS, wanted)


def gguf_fit_layout(plan: dict[str, T]):
    """fit_layout for the walk: each Linear's spec gets the GGML type the mix gives its weight."""
    def fit(name: str, spec, shape):
        qtype = plan.get(f"{name}.weight")
        if qtype is None:
            raise LowbitError(f"{name} is not a tensor of the GGUF file: exclude it with spec.ignore")
        return replace(spec, ggml_type=qtype.name)
    return fit


def source_gguf_for(loaded) -> Path | None:
    """A GGUF the model came from, whose tokenizer metadata the writer copies exactly."""
    from lowbit.io.default_model import default_gguf, default_model_dir

    if loaded.kind == "gguf":
        return Path(loaded.source)
    if Path(loaded.source).resolve() == default_model_dir().resolve():
        return default_gguf()
    return None


@torch.no_grad()
def _round_other_tensors(model, spec, plan: dict[str, T]) -> dict:
    """Block tensors the walk does not quantize (token embeddings, an untied output matrix):
    llama.cpp's rounding, as llama-quantize does, with the model's weights set to what the
    file will hold, so the walk's calibration inputs are those llama.cpp will compute."""
    walked = {f"{name}.weight" for name in target_linears(model, spec)}
    state = model.state_dict()
    blocks = {}
    for hf, qtype in plan.items():
        if hf in walked or qtype in FLOAT_TYPES:
            continue
        t = round_ggml(state[hf], qtype)
        state[hf].copy_(t.values.to(state[hf].dtype))
        blocks[hf] = (t.blocks, t.qtype)
    return blocks


def output_matrix(model, plan: dict[str, T]) -> str | None:
    """Name of the planned tensor the logits come from: lm_head, or the token embeddings it
    is tied to (then token_embd plays both roles in the file)."""
    head = model.get_output_embeddings()
    if head is None:
        return None
    ptr = head.weight.data_ptr()
    state = model.state_dict(keep_vars=True)
    return next((n for n in plan if n in state and state[n].data_ptr() == ptr), None)


def _head_to_calibrate(model, spec, plan: dict[str, T], calibration) -> str | None:
    """GPTQ's output matrix on its block grid, with the Hessian of the final hidden states
    (method_args head_gptq, default on): the tied token_embd is Q8_0 in every llama.cpp mix of
    the default model, and its rounding error reaches the logits directly."""
    if spec.method != "gptq" or calibration is None or not spec.method_args.get("head_gptq", True):
        return None
    head = output_matrix(model, plan)
    return None if head is None or plan[head] in FLOAT_TYPES else head


def quantize_to_gguf(loaded, spec, out: Path, file_type: str = "Q4_K_M", calibration=None,
                     overwrite: bool = False, progress=None) -> dict:
    """Quantize loaded.model (in place: weights become their dequantized values) onto the
    block grids of `file_type` and write OUT as a GGUF file (atomically). Returns a summary."""
    check_gguf_request(file_type, spec.method)
    plan = plan_types(loaded.model, file_type)
    head = _head_to_calibrate(loaded.model, spec, plan, calibration)
    head_weight = loaded.model.get_output_embeddings().weight.data if head else None
    float_head = head_weight.clone() if head else None  # before llama.cpp's rounding below
    blocks = _round_other_tensors(loaded.model, spec, plan)
    observer = HessianObserver(float_head.shape[1]) if head else None
    result = quantize_model(loaded.model, spec, calibration, fit_layout=gguf_fit_layout(plan), progress=progress,
                            head_inputs=observer.add_batch if head else None,
                            transform=gguf_smoothing(loaded.model, spec, plan, calibration))
    if head:
        # the walk ran on llama.cpp's rounding of this matrix (as token embeddings it fed layer 0);
        # the file holds GPTQ's codes, and the returned model equals the file
        t = quantize_on_ggml_grid(float_head, replace(spec, ggml_type=plan[head].name), observer)
        head_weight.copy_(t.values.to(head_weight.dtype))
        blocks[head] = (t.blocks, t.qtype)
    blocks.update({f"{name}.weight": (qt.blocks, qt.qtype) for name, qt in result.tensors.items()
                   if qt.qtype not in FLOAT_TYPES})  # float tensors: the writer converts them itself
    t0 = time.perf_counter()
    write_gguf(out, loaded.model, loaded.tokenizer, file_type, blocks=blocks, overwrite=overwrite,
               source_gguf=source_gguf_for(loaded))
    types: dict[str, int] = {}
    for qtype in plan.values():
        types[qtype.name] = types.get(qtype.name, 0) + 1
    return {"spec": spec.to_dict(), "base_model": loaded.source, "format": "gguf", "gguf_type": file_type.upper(),
            "tensor_types": types, "quantize_seconds": result.seconds, "layout_changes": {},
            "quantized_modules": len(result.tensors), "write_seconds": time.perf_counter() - t0,
            "smoothing": result.transforms, "tensors": result.tensors}
