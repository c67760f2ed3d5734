"""Rotate the residual stream (QuaRot / SpinQuant's R1 and R2, QuIP#'s incoherence): exact in
float, so every format and runtime loads the result with no new op.

With Q orthogonal (d x d) the model computes the same function when
  - each RMSNorm's weight is first folded into the columns of the Linears that read it (the
    norm is then w = 1, and rms(x Q) = rms(x), so the norm commutes with Q);
  - the embedding's rows become E Q (the residual stream is carried rotated);
  - every Linear reading the residual takes W Q, every Linear writing it Q^T W (and b Q);
  - the final norm is folded into the output matrix, which then takes W Q;
and, per attention head, v_proj's rows for the head become R^T W_v and o_proj's columns
for the head W_o R (R: head_dim x head_dim; attention mixes tokens, not channels).

Rounding then meets weights whose rows and columns mix every channel: outlier channels are
spread over all of them (max |W| / rms(W) falls), which is what lets 3- and 4-bit grids hold
them. Q and R are random-signed Hadamard matrices (transforms/hadamard.py), seeded.

A tied output matrix is untied first (it takes the final norm's weight, the embedding does
not): the checkpoint then stores both, which a user of a small tied model should know.
"""
from __future__ import annotations

import logging

import torch

from lowbit.arch import arch_for, decoder_layers
from lowbit.errors import LowbitError
from lowbit.transforms.hadamard import hadamard, random_rotation

log = logging.getLogger(__name__)
note = logging.getLogger("lowbit.note")
ROTATIONS = ("none", "hadamard")


def _set(param: torch.nn.Parameter, value: torch.Tensor) -> None:
    param.data = value.to(param.dtype).contiguous()


def _fold_norm(norm: torch.nn.Module, linears: list[torch.nn.Linear]) -> None:
    """Move the norm's per-channel weight into the readers' columns; the norm becomes w = 1."""
    if getattr(norm, "bias", None) is not None:
        raise LowbitError(f"rotation needs RMS norms without bias ({type(norm).__name__} has one): "
                          "this architecture cannot be rotated yet")
    w = norm.weight.detach().double()
    for lin in linears:
        _set(lin.weight, lin.weight.detach().double() * w[None, :])
    norm.weight.data.fill_(1.0)


def _rotate_inputs(lin: torch.nn.Linear, Q: torch.Tensor) -> None:
    _set(lin.weight, lin.weight.detach().double() @ Q)


def _rotate_outputs(lin: torch.nn.Linear, Q: torch.Tensor) -> None:
    _set(lin.weight, Q.T @ lin.weight.detach().double())
    if lin.bias is not None:
        _set(lin.bias, lin.bias.detach().double() @ Q)


def _rotate_values(v: torch.nn.Linear, o: torch.nn.Linear, R: torch.Tensor) -> None:
    hd = R.shape[0]
    Wv = v.weight.detach().double()  # (kv_heads * hd, d)
    _set(v.weight, (R.T @ Wv.reshape(-1, hd, Wv.shape[1])).reshape(Wv.shape))
    if v.bias is not None:
        _set(v.bias, (v.bias.detach().double().reshape(-1, hd) @ R).reshape(-1))
    Wo = o.weight.detach().double()  # (d, heads * hd)
    _set(o.weight, (Wo.reshape(Wo.shape[0], -1, hd) @ R).reshape(Wo.shape))


def _untie(model) -> bool:
    """Give the output matrix its own weight when it shares the embedding's; True if it did."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight.data_ptr() != emb.weight.data_ptr():
        return False
    head.weight = torch.nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    text.tie_word_embeddings = False
    return True


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@torch.no_grad()
def rotate_model(model: torch.nn.Module, seed: int = 0) -> dict:
    """Rotate `model` in place (float function unchanged); returns what was done."""
    arch = arch_for(model)
    rmap = arch.rotation
    if rmap is None:
        raise LowbitError(f"--rotate is not supported for {model.config.model_type} yet: "
                          "it needs RMS norms before attention and MLP (Llama, Mistral, Qwen2, Qwen3)")
    d, hd = model.config.hidden_size, head_dim_of(model.config)
    g = torch.Generator().manual_seed(seed)
    Q, R = random_rotation(d, g), random_rotation(hd, g)
    untied = _untie(model)
    if untied:
        note.info("rotation unties the output matrix from the embedding: the checkpoint stores both")
    head = model.get_output_embeddings()
    _fold_norm(model.get_submodule(rmap.final_norm), [head])
    _rotate_inputs(head, Q)
    emb = model.get_submodule(rmap.embed)
    _set(emb.weight, emb.weight.detach().double() @ Q)
    for layer in decoder_layers(model, arch):
        for norm, readers in rmap.reads:
            lins = [layer.get_submodule(n) for n in readers]
            _fold_norm(layer.get_submodule(norm), lins)
            for lin in lins:
                _rotate_inputs(lin, Q)
        for name in rmap.writes:
            _rotate_outputs(layer.get_submodule(name), Q)
        v, o = rmap.values
        _rotate_values(layer.get_submodule(v), layer.get_submodule(o), R)
    return {"kind": "hadamard", "seed": seed, "hidden": d, "head_dim": hd, "untied_head": untied,
            "hadamard": hadamard(d) is not None}


def rotation_transform(kind: str, seed: int):
    """The walk's whole-model transform for --rotate KIND, or None."""
    if kind not in ROTATIONS:
        raise LowbitError(f"rotate must be one of {', '.join(ROTATIONS)}, got {kind!r}")
    if kind == "none":
        return None

    def transform(model, calibration) -> dict:
        return rotate_model(model, seed)
    transform.name = "rotate"
    return transform
