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

Every part is local: a decoder layer's rotation needs only Q, R and that layer, so a model read
layer by layer (io/lazy_weights.py) is rotated as each layer arrives, and the embedding and
output matrix it re-reads from disk for writing are rotated as they are read. Products are
taken in float64 a block of rows at a time, in place.

A tied output matrix is untied first (it takes the final norm's weight, the embedding does
not): the checkpoint then stores both, which a user of a small tied model should know. When
quantizing (rotation_transform), the new copy of a 32-bit model is kept in float16 (its values
rounded so in memory too, so the walk computes what the file holds): half the bytes, at a
rounding of 2^-11 relative next to 4-bit weights elsewhere; rotate_model alone stays exact.
"""
from __future__ import annotations

import logging

import torch

from lowbit.arch import arch_for, decoder_layers
from lowbit.errors import LowbitError
from lowbit.transforms.hadamard import hadamard, random_rotation

log = logging.getLogger(__name__)
note = logging.getLogger("lowbit.note")
ROTATIONS = ("none", "hadamard", "auto")
ROWS_PER_BLOCK = 4096  # float64 work per block: 4096 rows x 4096 wide is 128 MB
HEAD_COPY_DTYPE = torch.float16  # an untied head's copy, for 32-bit models


def _rows_times_(W: torch.Tensor, M: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """W <- (W * scale) @ M in place (M square, float64), a block of rows at a time; returns W."""
    for i in range(0, W.shape[0], ROWS_PER_BLOCK):
        block = W[i:i + ROWS_PER_BLOCK].double()
        if scale is not None:
            block *= scale[None, :]
        W[i:i + ROWS_PER_BLOCK] = (block @ M).to(W.dtype)
    return W


def _columns_times_(W: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """W <- M^T W in place (M square, float64), a block of columns at a time; returns W."""
    _rows_times_(W.T, M)  # (M^T W)^T = W^T M, and W.T is a view of W
    return W


def _norm_weight(norm: torch.nn.Module) -> torch.Tensor:
    """The norm's per-channel weight (float64 copy); the norm becomes w = 1."""
    if getattr(norm, "bias", None) is not None:
        raise LowbitError(f"rotation needs RMS norms without bias ({type(norm).__name__} has one): "
                          "this architecture cannot be rotated yet")
    w = norm.weight.detach().double().clone()
    norm.weight.data.fill_(1.0)
    return w


def _rotate_values(v: torch.nn.Linear, o: torch.nn.Linear, R: torch.Tensor) -> None:
    hd = R.shape[0]
    Wv = v.weight.data  # (kv_heads * hd, d): each head's rows become R^T W_head
    heads = Wv.view(-1, hd, Wv.shape[1])
    for h in range(heads.shape[0]):
        _columns_times_(heads[h], R)
    if v.bias is not None:
        _rows_times_(v.bias.data.view(-1, hd), R)
    Wo = o.weight.data  # (d, heads * hd): each head's columns become W_head R
    _rows_times_(Wo.view(-1, hd), R)


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _name_of(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


class Rotation:
    """Q (residual stream) and R (per head), seeded, with the map of where they go."""

    def __init__(self, model: torch.nn.Module, seed: int = 0):
        arch = arch_for(model)
        if arch.rotation is None:
            raise LowbitError(f"--rotate is not supported for {model.config.model_type} yet: "
                              "it needs RMS norms before attention and MLP (Llama, Mistral, Qwen2, Qwen3)")
        self.arch, self.map, self.seed = arch, arch.rotation, seed
        self.d, self.hd = model.config.hidden_size, head_dim_of(model.config)
        g = torch.Generator().manual_seed(seed)
        self.Q, self.R = random_rotation(self.d, g), random_rotation(self.hd, g)

    def outside(self, model: torch.nn.Module, lazy=None, head_copy_dtype=None) -> bool:
        """Embedding, final norm and output matrix; True if the head was untied. With a lazy
        model, tensors still on disk (and the embedding, which the walk drops and the writer
        reads again) are rotated when they are read."""
        Q, rmap = self.Q, self.map
        emb, head = model.get_submodule(rmap.embed), model.get_output_embeddings()
        w_final = _norm_weight(model.get_submodule(rmap.final_norm))
        emb_key, head_key = f"{rmap.embed}.weight", f"{_name_of(model, head)}.weight"
        untied = head.weight is emb.weight or (
            not head.weight.is_meta and head.weight.data_ptr() == emb.weight.data_ptr())
        if untied:  # the head gets its own weight, computed from the embedding's
            shape, dtype = head.weight.shape, head.weight.dtype
            head.weight = torch.nn.Parameter(
                torch.empty(shape, dtype=dtype, device="meta") if lazy is not None else emb.weight.detach().clone(),
                requires_grad=False)
            _untie_config(model)
            if lazy is not None:
                lazy.deferred.add(head_key)
        self.head_key = head_key
        self.head_dtype = head_copy_dtype if untied and head.weight.element_size() == 4 else None

        def rotated_head(W):
            W = _rows_times_(W, Q, w_final)
            if self.head_dtype is not None:
                W.copy_(W.to(self.head_dtype))  # the values the file holds
            return W
        if lazy is not None:
            lazy.rewrite(head_key, emb_key if untied else head_key, rotated_head)
            lazy.rewrite(emb_key, emb_key, lambda E: _rows_times_(E, Q))
        if not head.weight.is_meta:
            rotated_head(head.weight.data)
        if not emb.weight.is_meta:
            _rows_times_(emb.weight.data, Q)
        return untied

    def layer(self, layer: torch.nn.Module) -> None:
        """One decoder layer, in place (its weights must be loaded)."""
        Q, rmap = self.Q, self.map
        for norm, readers in rmap.reads:
            w = _norm_weight(layer.get_submodule(norm))
            for name in readers:
                _rows_times_(layer.get_submodule(name).weight.data, Q, w)
        for name in rmap.writes:
            lin = layer.get_submodule(name)
            _columns_times_(lin.weight.data, Q)
            if lin.bias is not None:
                _rows_times_(lin.bias.data[None, :], Q)
        v, o = rmap.values
        _rotate_values(layer.get_submodule(v), layer.get_submodule(o), self.R)

    def report(self, untied: bool) -> dict:
        out = {"kind": "hadamard", "seed": self.seed, "hidden": self.d, "head_dim": self.hd,
               "untied_head": untied, "hadamard": hadamard(self.d) is not None}
        if self.head_dtype is not None:  # the writer stores the head's copy so
            out["stored_dtypes"] = {self.head_key: str(self.head_dtype).removeprefix("torch.")}
        return out


def _untie_config(model) -> None:
    model.config.tie_word_embeddings = False
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    text.tie_word_embeddings = False


@torch.no_grad()
def rotate_model(model: torch.nn.Module, seed: int = 0, lazy=None, head_copy_dtype=None) -> dict:
    """Rotate `model` in place (float function unchanged); returns what was done. With a lazy
    model (io/lazy_weights.LazyModel) each decoder layer is rotated when it is read.
    head_copy_dtype: what an untied head's new copy of a 32-bit model is rounded to (None: kept)."""
    rotation = Rotation(model, seed)
    untied = rotation.outside(model, lazy, head_copy_dtype)
    if untied:
        log.info("rotation unties the output matrix from the embedding: the checkpoint stores both")
    if lazy is not None:
        lazy.after_materialize(rotation.layer)
    else:
        for layer in decoder_layers(model, rotation.arch):
            rotation.layer(layer)
    return rotation.report(untied)


def resolve_rotation(kind: str, model: torch.nn.Module, spec, block_format: bool) -> str:
    """What --rotate KIND means for this run: "auto" (best-4bit's) is hadamard where it was
    measured to help (weight-only integer grids, Llama-like models) and none elsewhere."""
    if kind not in ROTATIONS:
        raise LowbitError(f"rotate must be one of {', '.join(ROTATIONS)}, got {kind!r}")
    if kind != "auto":
        return kind
    if block_format or spec.grid != "int" or spec.act != "none":  # not measured with a rotation
        return "none"
    if arch_for(model).rotation is None:
        note.info("no rotation for %s (it has no RMS norms to fold): %s alone", model.config.model_type, spec.method)
        return "none"
    return "hadamard"


def rotation_transform(kind: str, seed: int, lazy=None):
    """The whole-model transform for --rotate KIND ("none" or "hadamard"), or None."""
    if kind not in ("none", "hadamard"):
        raise LowbitError(f"rotate must be one of none, hadamard here, got {kind!r}")
    if kind == "none":
        return None

    def transform(model, calibration) -> dict:
        return rotate_model(model, seed, lazy, HEAD_COPY_DTYPE)
    transform.name = "rotate"
    return transform
