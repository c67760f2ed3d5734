"""GGUF as an output of the one layer walk: llama.cpp's block grids, written as one file.

gguf_mixes.plan_types names the GGML type of every tensor for a file type ("Q4_K_M"), by
llama.cpp's rules; fit() puts that type into each Linear's spec (spec.ggml_type), so the walk
hands the method llama.cpp's block grid of that type (formats/ggml_tensor.GGMLGrid; rtn is
llama.cpp's own rounding, gptq is GPTQ on those grids) and propagates what the blocks decode
to. The walk is the same as for every format: layers read one at a time, each finished layer
in the layer store (so --resume continues a killed run, byte-identical), then the file is
written streaming, one tensor at a time, from the store.
Tensors the walk does not quantize (token embeddings, which SmolLM2 ties to the output matrix)
get llama.cpp's rounding before the walk, so calibration sees what llama.cpp will compute;
with gptq and calibration the output matrix then gets GPTQ on its block grid with the Hessian
of the final hidden states (method_args head_gptq). With calibration each layer is first
smoothed (transforms/smooth.py): exact per-channel rescaling chosen against llama.cpp's rounding
of the weights and of the input rows its dot products quantize (formats/ggml_activations.py).
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from lowbit.calibration.hessian import HessianObserver
from lowbit.errors import LowbitError
from lowbit.formats import grid_for
from lowbit.formats.ggml_activations import input_rounding
from lowbit.formats.ggml_blocks import FLOAT_TYPES
from lowbit.formats.ggml_tensor import GGMLTensor, round_ggml
from lowbit.io.gguf_mixes import parse_file_type, plan_types
from lowbit.io.gguf_writer import write_gguf
from lowbit.methods import get_method
from lowbit.pipeline.sequential import target_linears
from lowbit.pipeline.smoothing import check_smooth, smoothing_transform
from lowbit.transforms.smooth import ALPHAS, AWQ_ALPHAS

GGUF_METHODS = ("rtn", "gptq", "awq")  # methods that choose codes on any grid, GGML blocks included (AWQ: its scales, then llama.cpp's rounding)


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
    return (lambda W: round_ggml(W, qtype, values=False)), input_rounding(qtype)  # blocks, decoded when used


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
    smooth = check_smooth(spec.method_args.get("smooth", "auto"))
    wanted = calibration is not None and smooth != "off"
    awq = smooth == "awq" or (smooth == "auto" and spec.method == "awq")
    return smoothing_transform(model, spec, rounding_for, AWQ_ALPHAS if awq else ALPHAS, wanted,
                               "awq" if awq else "smooth")


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


def output_matrix(model, plan: dict[str, T]) -> str | None:
    """Name of the planned tensor the logits come from: lm_head, or the token embeddings it
    is tied to (then token_embd plays both roles in the file)."""
    head = model.get_output_embeddings()
    if head is None:
        return None
    state = model.state_dict(keep_vars=True)
    return next((n for n in plan if n in state and state[n] is head.weight), None)


class GGUFOutput:
    """The walk's output for --format gguf: begin (plan, round the other tensors), fit and
    transform (the walk's hooks), head_observer, write (one file, atomically)."""

    def __init__(self, file_type: str, spec):
        check_gguf_request(file_type, spec.method)
        if spec.grid != "int":
            raise LowbitError(f"GGUF holds llama.cpp's block types, not the {spec.grid} grid: drop --grid "
                              "and choose the type with --gguf-type")
        self.file_type, self.spec = file_type.upper(), spec
        self.blocks: dict[str, tuple[np.ndarray, T]] = {}
        self.head_observer = None
        self.head = None
        self._float_head = None

    def begin(self, model, calibration, keep_float_head: bool = False) -> None:
        """Plan the file's types and round the tensors the walk does not quantize.
        keep_float_head: the model is held in memory (no copy of it on disk to read the float
        output matrix from again): keep it before it is rounded."""
        spec = self.spec
        self.plan = plan_types(model, self.file_type)
        self.fit = gguf_fit_layout(self.plan)
        self.transforms = [gguf_smoothing(model, spec, self.plan, calibration)]  # per layer, in order
        head = output_matrix(model, self.plan)
        if (spec.method == "gptq" and calibration is not None and spec.method_args.get("head_gptq", True)
                and head is not None and self.plan[head] not in FLOAT_TYPES):
            # the tied token_embd is Q8_0 in every llama.cpp mix of the default model, and its
            # rounding error reaches the logits directly
            self.head = head
            self.head_observer = HessianObserver(model.get_output_embeddings().weight.shape[1])
            if keep_float_head:
                self._float_head = model.get_output_embeddings().weight.data.clone()
        self._round_other_tensors(model)

    @torch.no_grad()
    def _round_other_tensors(self, model) -> None:
        """Block tensors the walk does not quantize (token embeddings, an untied output matrix):
        llama.cpp's rounding, as llama-quantize does, with the model's weights set to what the
        file will hold, so the walk's calibration inputs are those llama.cpp will compute.
        Tensors still on disk (an untied head of a layer-by-layer model) are rounded when written."""
        walked = {f"{name}.weight" for name in target_linears(model, self.spec)}
        state = model.state_dict()
        for hf, qtype in self.plan.items():
            if hf in walked or qtype in FLOAT_TYPES or state[hf].is_meta:
                continue
            t = round_ggml(state[hf], qtype, into=state[hf])  # in place, a block of rows at a time
            self.blocks[hf] = (t.blocks, t.qtype)

    def _quantize_head(self, model, fetch) -> None:
        """GPTQ of the output matrix with the statistics of its inputs, from its float weights
        (read from disk again: the walk ran on llama.cpp's rounding of it). The returned model
        then equals the file."""
        if self.head is None:
            return
        weight = model.get_output_embeddings().weight
        float_head = fetch(self.head) if fetch is not None else None  # as stored: fp16 stays fp16
        if float_head is None:
            float_head = self._float_head
        hspec = replace(self.spec, ggml_type=self.plan[self.head].name)
        t = get_method(self.spec.method).quantize(float_head, grid_for(hspec), hspec, self.head_observer)
        if not weight.is_meta:
            weight.data.copy_(t.dequantize().to(weight.dtype))
        self.blocks[self.head] = (t.blocks, t.qtype)

    def write(self, out: Path, loaded, result, store=None, fetch=None, layers_prefix: str = "",
              overwrite: bool = False, metadata: dict | None = None) -> dict:
        """Write OUT: the walk's blocks from memory or from the layer store, the rest from the
        model (or fetch(name) for tensors left on disk). Returns the summary's GGUF keys."""
        self._quantize_head(loaded.model, fetch)
        source = _TensorSource(loaded.model, result, store, layers_prefix, fetch, self.blocks)
        t0 = time.perf_counter()
        write_gguf(out, loaded.model, loaded.tokenizer, self.file_type, overwrite=overwrite,
                   source_gguf=source_gguf_for(loaded), tensor=source.get, metadata=metadata)
        types: dict[str, int] = {}
        for qtype in self.plan.values():
            types[qtype.name] = types.get(qtype.name, 0) + 1
        return {"format": "gguf", "gguf_type": self.file_type, "tensor_types": types,
                "write_seconds": time.perf_counter() - t0}


class _TensorSource:
    """What the writer asks for, one tensor at a time, in the file's order: blocks the walk
    chose (in memory, or read back from the layer store one layer at a time), other tensors
    from the model, or from disk (fetch) for those the layer-by-layer model never held."""

    def __init__(self, model, result, store, prefix: str, fetch, blocks: dict):
        self.state = model.state_dict(keep_vars=True)
        self.result, self.store, self.prefix, self.fetch, self.blocks = result, store, prefix, fetch, blocks
        self._layer, self._tensors, self._plain = None, {}, {}

    def _from_store(self, name: str):
        i = int(name[len(self.prefix) + 1:].split(".")[0])
        if self._layer != i:
            self._tensors, _, _, self._plain = self.store.load_layer(i)
            self._layer = i
        module = name[: -len(".weight")]
        if module in self._tensors:
            return self._tensors[module]
        return self._plain.get(name)

    def get(self, name: str):
        """GGMLTensor blocks, or a float tensor for the writer to convert."""
        if name in self.blocks:
            return GGMLTensor(self.blocks[name][1], self.blocks[name][0])
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        if module in self.result.tensors:
            return self.result.tensors[module]
        if self.store is not None and self.prefix and name.startswith(self.prefix + "."):
            got = self._from_store(name)
            if got is not None:
                return got
        t = self.state[name]
        if t.is_meta:
            if self.fetch is None:
                raise ValueError(f"{name} was never loaded")
            return self.fetch(name)  # as stored; the writer converts a block of rows at a time
        return t.detach()
