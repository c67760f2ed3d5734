"""Codes on GGML block grids (the k-quant and legacy types inside a GGUF file), chosen by
round-to-nearest as llama.cpp does, or by GPTQ on the block grids themselves.

The walk reaches these through the rtn and gptq methods when spec.ggml_type names a GGML
type (the GGUF writer's fit_layout sets it per tensor from gguf_mixes.plan_types). Each
returns a GGMLTensor: the exact block bytes and the float weights they decode to, which the
walk propagates to later layers.

GPTQ on a block grid (gptq_ggml): columns are processed in order of the super-blocks (256
columns for Q2_K..Q6_K, 32 for Q4_0..Q8_0). When a block of columns is reached, its grid
(llama.cpp's own choice of super-scale, sub-scales and minima, formats/ggml_blocks.fit_grid)
is fitted on the weights as GPTQ has updated them so far, with the importance vector
diag(H) / 2 = mean squared input (llama.cpp's imatrix semantics); then each column is rounded
to the nearest point of that fixed grid and its error spread over the columns still to come
with the inverse-Hessian Cholesky factor (methods/gptq.solve_columns). Inside a block the
columns may go in order of decreasing diag(H) ("group" order): the grid stays one block of
contiguous columns, so the bytes keep llama.cpp's layout. On the 32-column types a global
act-order on grids fitted up front ("static") leaves less error; "auto" (the default) takes
static there and group on the k-quants (notes/gguf_gptq.md).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from lowbit.errors import LowbitError
from lowbit.formats import ggml_blocks
from lowbit.methods.gptq_solver import inverse_cholesky, prepare, solve_columns

log = logging.getLogger(__name__)
ORDERS = ("group", "none", "static", "auto")  # act-order inside blocks, natural, global act-order, by block size


@dataclass
class GGMLTensor:
    """One weight matrix as GGML blocks. values (rows, cols) float32 is exactly what the
    blocks decode to (gguf.quants.dequantize), i.e. what the walk propagates."""
    qtype: T
    blocks: np.ndarray    # uint8 (rows, cols // block * type_size), HF row order
    values: torch.Tensor  # (rows, cols) float32

    def dequantize(self) -> torch.Tensor:
        return self.values


def ggml_type(name: str) -> T:
    """The GGML type called `name` ("Q4_K"), if lowbit has a block quantizer for it."""
    try:
        qtype = T[str(name).upper()]
    except KeyError:
        qtype = None
    if qtype not in ggml_blocks.SUPPORTED:
        names = " ".join(t.name for t in ggml_blocks.SUPPORTED)
        raise LowbitError(f"GGML type {name!r} has no block quantizer in lowbit: use one of {names}")
    return qtype


def _decoded(blocks: np.ndarray, qtype: T, shape) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(blocks, qtype), dtype=np.float32)
                            .reshape(shape))


def importance_from_hessian(H: torch.Tensor) -> np.ndarray:
    """llama.cpp's imatrix semantics, the mean squared input per column: diag(H) / 2 for
    H = 2 X^T X / n (calibration/hessian.py)."""
    return (torch.diag(H).double() / 2).clamp_min(0).float().numpy()


def round_ggml(W: torch.Tensor, qtype: T, importance: np.ndarray | None = None) -> GGMLTensor:
    """llama.cpp's own rounding (byte-identical to its C code): the reference path without
    importance, its imatrix path with it."""
    Wn = W.detach().to(torch.float32).cpu().numpy()
    blocks = ggml_blocks.quantize(Wn, qtype, importance).reshape(Wn.shape[0], -1)
    return GGMLTensor(qtype, blocks, _decoded(blocks, qtype, Wn.shape))


def _order(d: torch.Tensor, block: int, order: str) -> torch.Tensor:
    """Processing order of the columns (a permutation); "group" keeps each block contiguous."""
    cols = d.numel()
    if order == "none":
        return torch.arange(cols)
    if order == "static":
        return torch.argsort(d, descending=True, stable=True)
    if order != "group":
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    local = torch.argsort(d.reshape(-1, block), dim=1, descending=True, stable=True)
    return (local + torch.arange(0, cols, block)[:, None]).reshape(-1)


@contextlib.contextmanager
def _one_thread():
    """The column loop is thousands of small BLAS calls: with two threads each one waits for
    the other core, which another process may hold (measured 15x slower on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def gptq_ggml(W: torch.Tensor, H: torch.Tensor, qtype: T, damp_percent: float = 0.01,
              block_size: int = 256, order: str = "auto") -> GGMLTensor:
    """W (out, in), H (in, in) -> GGMLTensor of type qtype chosen by GPTQ on its block grids.

    order "group": act-order inside each block, grids fitted block by block on the updated
    weights; "none": natural order; "static": global act-order on grids fitted up front from
    the unquantized weights (llama.cpp's grid with importance, then GPTQ's codes on it);
    "auto": static for 32-column blocks, group for the 256-column k-quants."""
    qtype = T(qtype)
    if qtype in ggml_blocks.FLOAT_TYPES:
        return round_ggml(W, qtype)
    rows, cols = W.shape
    G = ggml_blocks.block_size(qtype)
    if order == "auto":  # layer-wise best (notes/gguf_gptq.md): static on 32-blocks, group on k-quants
        order = "static" if G == 32 else "group"
    imp = importance_from_hessian(H)
    W, H = prepare(W, H)
    perm = _order(torch.diag(H), G, order)
    perm_np = perm.numpy()

    codec = ggml_blocks.CODECS[qtype]
    if order == "static":
        grid = ggml_blocks.fit_grid(W.numpy(), qtype, imp)
    else:  # filled block by block as the solve reaches each block
        grid = ggml_blocks.BlockGrid(qtype, np.zeros((rows, cols), np.float32), np.zeros((rows, cols), np.float32),
                                     codec.qmax, np.zeros((rows, cols // G, codec.type_size), np.uint8))
    codes = np.zeros((rows, cols), np.uint8)
    block_size = max(G, block_size // G * G)  # whole blocks: a grid is fitted on fully updated weights

    def round_column(j: int, WT: torch.Tensor) -> torch.Tensor:
        if order != "static" and j % G == 0:
            nat = perm_np[j:j + G] - j  # the block's columns in natural order (same block: same start)
            Wb = np.empty((rows, G), np.float32)
            Wb[:, nat] = WT[j:j + G].T.numpy()
            fitted = ggml_blocks.fit_grid(Wb, qtype, imp[j:j + G])
            grid.scale[:, j:j + G], grid.offset[:, j:j + G] = fitted.scale, fitted.offset
            grid.header[:, j // G] = fitted.header[:, 0]
        c = int(perm_np[j])
        q = ggml_blocks.round_to_grid(grid, WT[j].numpy()[:, None], cols=slice(c, c + 1))
        codes[:, c] = q[:, 0]
        return torch.from_numpy(grid.scale[:, c] * q[:, 0].astype(np.float32) - grid.offset[:, c])

    U = inverse_cholesky(H[perm][:, perm], damp_percent).float()  # (in, in) upper factor of H^-1
    with _one_thread():
        solve_columns(W[:, perm].T.contiguous(), U, block_size, round_column)
    blocks = ggml_blocks.encode(grid, codes)
    return GGMLTensor(qtype, blocks, torch.from_numpy(grid.dequantize(codes)))


def quantize_on_ggml_grid(W: torch.Tensor, spec, observer=None) -> GGMLTensor:
    """What the rtn and gptq methods do when spec.ggml_type is set. method_args: gguf_solver
    "gptq" (default for gptq) or "imatrix" (llama.cpp's importance-weighted rounding with our
    calibration statistics: the ablation without error compensation), damp_percent,
    ggml_order (auto | group | none | static)."""
    qtype = ggml_type(spec.ggml_type)
    if spec.method == "rtn" or observer is None or getattr(observer, "n", 0) == 0:
        if spec.method != "rtn":
            log.warning("no calibration inputs reached this layer: using llama.cpp's rounding")
        return round_ggml(W, qtype)
    a = spec.method_args  # checked against GPTQOptions before the walk (lowbit/options.py)
    solver = a.get("gguf_solver", "gptq")
    if solver == "imatrix":
        return round_ggml(W, qtype, importance_from_hessian(observer.H))
    if solver != "gptq":
        raise LowbitError(f"gguf_solver {solver!r} is unknown: use gptq or imatrix")
    return gptq_ggml(W, observer.H, qtype, damp_percent=a.get("damp_percent", 0.01),
                     block_size=a.get("block_size") or 256, order=a.get("ggml_order", "auto"))
