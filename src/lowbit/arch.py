"""Architecture maps as data: where the decoder layers are, and the order of the
Linear layers inside one, grouped so that each group's inputs depend only on the
groups before it (the true-sequential order GPTQ uses)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.errors import LowbitError


@dataclass(frozen=True)
class ArchMap:
    layers: str  # dotted path of the ModuleList of decoder layers
    sequential: tuple[tuple[str, ...], ...]  # Linear names relative to a layer
    # modules between the last decoder layer and the output matrix, in order (absent ones skipped)
    head_input: tuple[str, ...] = ()
    # (prev, linears): the linears' common input is prev's output times its per-channel weight
    # (a norm) or prev's output rows (a Linear, with nothing nonlinear per channel between but
    # a multiplication), so scaling it by 1/s at prev and their columns by s is exact
    smooth: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # where a rotation of the residual stream goes (transforms/rotate.py); None: not supported
    rotation: "RotationMap | None" = None


@dataclass(frozen=True)
class RotationMap:
    """The residual stream's readers and writers, relative to a decoder layer (RMSNorm models:
    the norm's weight is folded into its readers, so the norm commutes with a rotation)."""
    embed: str  # the token embedding (its rows are residual vectors)
    final_norm: str  # folded into the output matrix
    reads: tuple[tuple[str, tuple[str, ...]], ...]  # (norm, Linears reading its output)
    writes: tuple[str, ...]  # Linears adding their output to the residual
    values: tuple[str, str]  # (v_proj, o_proj): a rotation per head between them


_LLAMA_ROTATION = RotationMap(
    embed="model.embed_tokens", final_norm="model.norm",
    reads=(("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
           ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))),
    writes=("self_attn.o_proj", "mlp.down_proj"),
    values=("self_attn.v_proj", "self_attn.o_proj"))


_LLAMA = ArchMap(
    layers="model.layers",
    sequential=(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                ("self_attn.o_proj",),
                ("mlp.gate_proj", "mlp.up_proj"),
                ("mlp.down_proj",)),
    head_input=("model.norm",),
    smooth=(("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
            ("mlp.up_proj", ("mlp.down_proj",))),  # down's input is act(gate) * up
    rotation=_LLAMA_ROTATION,
)
_OPT = ArchMap(
    layers="model.decoder.layers",
    sequential=(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                ("self_attn.out_proj",), ("fc1",), ("fc2",)),
    head_input=("model.decoder.final_layer_norm", "model.decoder.project_out"),
    # no smooth pairs: opt-350m puts its norms after the blocks (do_layer_norm_before False)
)

ARCHS: dict[str, ArchMap] = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA, "opt": _OPT,
}


def arch_for(model: torch.nn.Module) -> ArchMap:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHS:
        raise LowbitError(f"architecture {model_type!r} is not supported yet: "
                          f"lowbit supports {', '.join(sorted(ARCHS))}")
    return ARCHS[model_type]


def decoder_layers(model: torch.nn.Module, arch: ArchMap) -> torch.nn.ModuleList:
    return model.get_submodule(arch.layers)


def head_input_modules(model: torch.nn.Module, arch: ArchMap) -> list[torch.nn.Module]:
    """The modules that turn the last decoder layer's output into the output matrix's input."""
    out = []
    for path in arch.head_input:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if module is not None:
            out.append(module)
    return out
