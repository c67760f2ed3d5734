"""Packed Linears: a quantized weight kept in memory as its codes, computed with a kernel.

A kernel registers a module class with @register_kernel; packed_linear(qt, bias, dtype) picks
the first whose accepts(qt) says yes; the last, the dequantize-on-the-fly fallback
(runtime/dequant_linear.py), takes any kind, so every quantized tensor lowbit reads can run.
Kernels live in one file each (int4_linear.py, int8_linear.py); this file only dispatches.
"""
from __future__ import annotations

import torch

KERNELS: list[type["PackedLinear"]] = []
# each registers its modules, in order of preference; the fallback, which accepts everything, last
KERNEL_MODULES = ("lowbit.runtime.int4_linear", "lowbit.runtime.int8_linear", "lowbit.runtime.dequant_linear")


def register_kernel(cls):
    KERNELS.append(cls)
    return cls


class PackedLinear(torch.nn.Module):
    """y = x W^T + b with W held packed. dtype: what activations (and any float state) are in."""
    kernel = "?"  # what computes it, for summaries ("int4 tinygemm", "int8 weight-only", ...)

    def __init__(self, out_features: int, in_features: int, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features, self.dtype = in_features, out_features, dtype
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    @classmethod
    def accepts(cls, qt) -> bool:
        raise NotImplementedError

    @classmethod
    def from_qtensor(cls, qt, bias: torch.Tensor | None, dtype: torch.dtype, exact: bool = False) -> "PackedLinear":
        """exact: compute in float32 where the kernel's fast path is lower precision (bf16 on
        CPUs), to check a runtime against the dequantized model token for token."""
        raise NotImplementedError

    def _compute(self, x: torch.Tensor, matmul) -> torch.Tensor:
        """matmul(x2) -> (rows, out) of the rows x2 (rows, in) cast to self.compute; the casts,
        the bias and the shape around it, as every kernel module needs them."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(self.compute).contiguous()
        y = matmul(x2).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def packed_bytes(self) -> int:
        """Bytes this module holds (codes, scales, bias): what a decode step reads."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


def packed_linear(qt, bias: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                  exact: bool = False) -> PackedLinear:
    """The fastest registered module that computes with qt's codes."""
    import importlib

    for name in KERNEL_MODULES:
        importlib.import_module(name)
    return next(cls for cls in KERNELS if cls.accepts(qt)).from_qtensor(qt, bias, dtype, exact)


def pack_model(model: torch.nn.Module, tensors: dict, dtype: torch.dtype = torch.float32,
               free: bool = True, exact: bool = False) -> dict[str, str]:
    """Replace each Linear named in tensors (name -> QTensor) by its packed module; returns
    name -> kernel. free: drop each QTensor from `tensors` once packed (its codes are copied
    into the kernel's layout, so the two are not held at once for long)."""
    kernels = {}
    for name in list(tensors):
        qt = tensors.pop(name) if free else tensors[name]
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        bias = getattr(old, "bias", None)
        bias = None if bias is None or bias.is_meta else bias
        module = packed_linear(qt, bias, dtype, exact)
        setattr(parent, attr, module)
        kernels[name] = module.kernel
        del qt, old
    return kernels
