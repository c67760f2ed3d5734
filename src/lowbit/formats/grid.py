"""Grids handed to methods: the set of values a weight may take, and how codes are stored.

A method chooses codes on whatever grid it is handed: RTN calls grid.rtn; GPTQ fits the grid
(whole matrix, or block by block as its column loop reaches each block), rounds one column at
a time and encodes (methods/gptq_solver.gptq_on_grid). The walk resolves each Linear's grid
once, from its spec after the output format's fit (grid_for):
  spec.ggml_type set      llama.cpp's block grid of that type (ggml_tensor.GGMLGrid)
  spec.grid "int"         integer affine, bits / group size / symmetric (int_affine.IntAffineGrid)
  spec.grid "nf4"         NormalFloat-4 blocks of 64, double quantization (nf4.NF4Grid)
  spec.grid "fp4"         bitsandbytes' e2m1 code book, the same blocks (nf4.NF4Grid)
A new grid is one file with a Grid subclass and a register_grid line.
"""
from __future__ import annotations

from typing import Callable, ClassVar

import torch

from lowbit.formats.qtensor import QTensor

GRIDS: dict[str, Callable] = {}  # spec.grid -> factory(spec, auto_clip) -> Grid


def register_grid(name: str):
    def deco(factory):
        GRIDS[name] = factory
        return factory
    return deco


class Grid:
    """block: contiguous input columns that share one grid (0: the whole row).
    static_only: its grids can only be fitted up front from the whole matrix (NF4's double
    quantization couples the scales of many blocks). reorderable: groups may follow a processing
    order, recorded as g_idx (integer grids in GPTQ formats). threads: threads for GPTQ's column
    loop (None: as set; 1 where rounding a column is many small numpy calls). rows_independent:
    each row's grid depends on that row alone, so a large matrix may be solved in blocks of rows."""
    kind: ClassVar[str]
    block: int = 0
    solve_block: ClassVar[int] = 128  # GPTQ's lazy-update block (columns) on this grid
    static_only: ClassVar[bool] = False
    reorderable: ClassVar[bool] = False
    threads: ClassVar[int | None] = None
    rows_independent: ClassVar[bool] = False  # a matrix may be quantized in blocks of rows and joined
    takes_importance: ClassVar[bool] = False  # fit / rtn weigh columns by an importance vector (imatrix)

    def rtn(self, W: torch.Tensor, importance: torch.Tensor | None = None) -> QTensor:
        """Round-to-nearest of W (out, in) on its own fitted grid (the grid's reference rounding)."""
        raise NotImplementedError

    def fit(self, W: torch.Tensor, importance: torch.Tensor | None = None):
        """The grid of every column of W (out, in), fitted from W as it is."""
        raise NotImplementedError

    def empty(self, rows: int, cols: int):
        """A grid to be filled block by block (fit_block)."""
        raise NotImplementedError

    def fit_block(self, fitted, W_cols: torch.Tensor, block: int, cols: torch.Tensor,
                  importance: torch.Tensor | None = None) -> None:
        """Fit block `block` from the current weights W_cols (out, n) of the columns `cols`."""
        raise NotImplementedError

    def round_column(self, fitted, c: int, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes uint8 (out,), values (out,)) of column c's weights w on its fitted grid."""
        raise NotImplementedError

    def encode(self, fitted, codes: torch.Tensor, reordered: bool = False) -> QTensor:
        """The quantized tensor of codes (out, in) on fitted (reordered: groups follow g_idx)."""
        raise NotImplementedError

    def join_rows(self, parts: list[QTensor]) -> QTensor:
        """One quantized tensor from quantized blocks of consecutive rows (rows_independent grids)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def grid_for(spec, auto_clip: str = "minmax") -> Grid:
    """The grid a Linear with this (fitted) spec is quantized on; auto_clip is what the
    method makes of clip "auto" on integer grids."""
    if getattr(spec, "ggml_type", None) is not None:
        return GRIDS["ggml"](spec, auto_clip)
    name = getattr(spec, "grid", "int")
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}: choose one of {', '.join(sorted(g for g in GRIDS if g != 'ggml'))}")
    return GRIDS[name](spec, auto_clip)
