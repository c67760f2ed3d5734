"""The quantized-tensor protocol: what every kind of quantized weight offers, whatever its grid.

A quantized (out, in) weight dequantizes to float, says how many bytes it stores (codes and
every scale, zero point or code book), and turns into named tensors plus a JSON-able header
and back (the layer store saves any kind this way; formats read the fields they hold).
Kinds: "int" (integer affine, int_affine.py), "ggml" (llama.cpp blocks, ggml_tensor.py),
"nf4" (QLoRA NormalFloat with double quantization, nf4.py). A new kind subclasses QTensor
and registers itself with @register_kind.
"""
from __future__ import annotations

from typing import ClassVar

import torch

KINDS: dict[str, type["QTensor"]] = {}


def register_kind(cls):
    KINDS[cls.kind] = cls
    return cls


class QTensor:
    kind: ClassVar[str]

    @property
    def shape(self) -> tuple[int, int]:
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        """The float32 (out, in) weight the codes stand for."""
        raise NotImplementedError

    def stored_bytes(self) -> int:
        """Bytes of codes and grid (scales, zero points, code books) as a format stores them."""
        raise NotImplementedError

    def bits_per_weight(self) -> float:
        out, inp = self.shape
        return 8 * self.stored_bytes() / (out * inp)

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors that define it, by field name."""
        raise NotImplementedError

    def header(self) -> dict:
        """Everything else that defines it (JSON-able), without the kind."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], header: dict) -> "QTensor":
        raise NotImplementedError

    def header_only(self):
        """What a format's quantization_config reads of it, without the codes (a writer keeps
        this for every layer while the codes go to disk one layer at a time)."""
        from types import SimpleNamespace

        return SimpleNamespace(kind=self.kind, **self.header())

    def grid_name(self) -> str:
        """The spec grid (formats/grid.py) these codes are on, as formats' holds name it."""
        return self.kind

    def drop_decoded(self) -> None:
        """Forget what dequantize() can compute again from the state (float values kept only to
        save the decoding): the walk calls it once the weight holds them."""

    def to(self, device) -> "QTensor":
        return type(self).from_state({k: v.to(device) for k, v in self.state().items()}, self.header())

    def describe(self) -> str:
        """A short name of the grid, for summaries ("int4 g128", "nf4", "Q4_K")."""
        raise NotImplementedError


def to_named(qt: QTensor) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors by field, header with the kind) of any quantized tensor."""
    return qt.state(), {"kind": qt.kind, **qt.header()}


def from_named(state: dict[str, torch.Tensor], header: dict) -> QTensor:
    header = dict(header)
    kind = header.pop("kind", "int")  # layer stores written before kinds existed held integers
    if kind not in KINDS:
        raise ValueError(f"unknown quantized-tensor kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    return KINDS[kind].from_state(state, header)
