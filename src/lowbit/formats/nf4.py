"""bitsandbytes' 4-bit code books, NF4 and FP4, with double quantization (Dettmers et al.,
QLoRA, 2023), as bitsandbytes stores them.

Weights are taken in row-major order in blocks of 64; each block keeps its absolute maximum
(absmax) and each weight the index of the nearest of 16 fixed values (the NF4 code book:
quantiles of a standard normal, scaled to [-1, 1], with an exact zero) of w / absmax.
Double quantization stores the absmax values themselves in 8 bits: their mean is removed, then
blocks of 256 of them are quantized with bitsandbytes' signed 8-bit "dynamic" code (a sign, a
decimal exponent and a linear fraction) against their own absolute maximum, kept in float32.
Bits per weight: 4 + 8/64 + 32/(64*256) = 4.127 with double quantization, 4 + 32/64 = 4.5
without (plus, per tensor, the float32 mean and the two code books a bitsandbytes file holds).

FP4 is the same layout with another code book: e2m1 floats (a sign, 2 exponent bits with bias
2, 1 mantissa bit; the smallest code a subnormal) divided by their maximum, 12, as bitsandbytes'
get_4bit_type("fp4") builds them and writes them to a file's quant_map:
{0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1} and their negatives, in bitsandbytes' code order (not
sorted: code 3 is 1.0, code 8 is -0). bitsandbytes' CPU kernels round with a 4-decimal copy of
it (0.6667 for 2/3); lowbit rounds to the exact values the file records.

Blocks run over the flattened (row-major) weight, so a block may span two rows when a row is
not a multiple of 64 long. Codes of rtn() are bitsandbytes' quantize_4bit exactly: chosen
against the unrounded absmax, ties to the lower code. GPTQ instead rounds against the absmax
the file stores (fit()).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.errors import LowbitError
from lowbit.formats.grid import Grid, register_grid
from lowbit.formats.qtensor import QTensor, register_kind

# the 16 NF4 values of the QLoRA paper (float32), in code order 0..15
NF4_VALUES = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
              -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
              0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
              0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
# e2m1 in bitsandbytes' bit-pattern order (codes 0..7 positive, 8..15 negative), before /12
FP4_E2M1 = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0)
QUANT_TYPES = ("nf4", "fp4")
BLOCK = 64
NESTED_BLOCK = 256


def nf4_code() -> torch.Tensor:
    return torch.tensor(NF4_VALUES, dtype=torch.float32)


def code_book(quant_type: str) -> torch.Tensor:
    """The 16 values of a 4-bit code, float32, in code order."""
    if quant_type == "nf4":
        return nf4_code()
    if quant_type == "fp4":
        e2m1 = torch.tensor(FP4_E2M1, dtype=torch.float32)
        return e2m1 / e2m1.abs().max()
    raise ValueError(f"unknown 4-bit code {quant_type!r}: use one of {', '.join(QUANT_TYPES)}")


def dynamic_code() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic code (256 sorted values in [-1, 1]): for decimal
    exponents 10^-6 .. 10^0, 2^i linear fractions between 0.1 and 1 (bin centres), with both
    signs, plus 0 and 1."""
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        centres = (10 ** (i - 6)) * ((edges[:-1] + edges[1:]) / 2)
        values += centres.tolist() + (-centres).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


def _nearest(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest value of the code for x in [-1, 1]; a tie takes the lower value
    (FP4's -0 and +0 tie at 0: the first of them in sorted order, as bitsandbytes picks)."""
    order = torch.argsort(code, stable=True)
    ordered = code[order]
    at = torch.bucketize(x, (ordered[:-1] + ordered[1:]) / 2)
    return at if torch.equal(order, torch.arange(code.numel())) else order[at]


LUT_SIZE = 65536


def _table_nearest(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """The 8-bit rounding of bitsandbytes' CPU kernel: x in [-1, 1] goes to the nearest of
    65536 evenly spaced points first, and that point to its nearest code value. It differs
    from exact nearest rounding only within half a table step of a midpoint; reproduced so
    that our double-quantized absmax equals bitsandbytes' own, byte for byte."""
    steps = float(LUT_SIZE - 1)
    idx = ((x.float().clamp(-1, 1) + 1.0) * 0.5 * steps + 0.5).to(torch.int64).float()
    return _nearest(-1.0 + (2.0 * idx) / steps, code)


def _scaled(blocks: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """blocks (n, B) / absmax (n,) into [-1, 1], by a reciprocal as bitsandbytes computes it."""
    return torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38))[:, None], -1, 1)


def _flat_blocks(W: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """(W in row-major order as (nblocks, block), zero-padded; the length of a last partial block
    or 0). Blocks run over the flattened weight, across rows, as bitsandbytes takes them; zeros
    change neither a block's absmax nor its codes' meaning."""
    flat = W.detach().float().reshape(-1)
    rem = flat.numel() % block
    if rem:
        flat = torch.nn.functional.pad(flat, (0, block - rem))
    return flat.reshape(-1, block), rem


def _codes(blocks: torch.Tensor, absmax: torch.Tensor, rem: int, code: torch.Tensor) -> torch.Tensor:
    """Nearest NF4 codes of each block scaled by its absmax. bitsandbytes divides a last partial
    block by its absmax instead of multiplying by the reciprocal: the same, except at a tie."""
    scaled = _scaled(blocks, absmax)
    if rem:
        scaled[-1] = torch.clamp(blocks[-1] / absmax[-1].clamp(min=1e-38), -1, 1)
    return _nearest(scaled, code)


def double_quantize(absmax: torch.Tensor, nested_block: int = NESTED_BLOCK):
    """(codes uint8 (n,), nested absmax float32 (ceil(n / nested_block),), offset float32 ())."""
    offset = absmax.mean()
    x = absmax - offset
    n = x.numel()
    nb = -(-n // nested_block)
    padded = torch.nn.functional.pad(x, (0, nb * nested_block - n)).reshape(nb, nested_block)
    absmax2 = padded.abs().amax(dim=1)
    q = _table_nearest(_scaled(padded, absmax2), dynamic_code()).reshape(-1)[:n].to(torch.uint8)
    return q, absmax2, offset


def double_dequantize(q: torch.Tensor, absmax2: torch.Tensor, offset: torch.Tensor,
                      nested_block: int = NESTED_BLOCK) -> torch.Tensor:
    n = q.numel()
    values = dynamic_code()[q.long()]
    per = absmax2.repeat_interleave(nested_block)[:n]
    return values * per + offset


@register_kind
@dataclass
class NF4Tensor(QTensor):
    """codes (out, in) uint8 0..15 into the quant_type's code book (nf4 or fp4); per block of
    `block` weights (row-major) its absmax, stored as float32 (absmax) or, double quantized, as
    8-bit codes qabsmax with absmax2 per nested_block of them and the removed mean offset."""
    kind = "nf4"
    codes: torch.Tensor
    absmax: torch.Tensor | None          # float32 (nblocks,), without double quantization
    qabsmax: torch.Tensor | None         # uint8 (nblocks,)
    absmax2: torch.Tensor | None         # float32 (ceil(nblocks / nested_block),)
    offset: torch.Tensor | None          # float32 ()
    block: int = BLOCK
    nested_block: int = NESTED_BLOCK
    quant_type: str = "nf4"

    @property
    def double_quant(self) -> bool:
        return self.qabsmax is not None

    @property
    def shape(self):
        return tuple(self.codes.shape)

    def grid_name(self) -> str:
        return self.quant_type

    def block_absmax(self) -> torch.Tensor:
        """float32 (nblocks,): the absmax each block is decoded with."""
        if self.double_quant:
            return double_dequantize(self.qabsmax, self.absmax2, self.offset, self.nested_block)
        return self.absmax

    def dequantize(self) -> torch.Tensor:
        out, inp = self.shape
        blocks, _ = _flat_blocks(self.codes, self.block)
        values = code_book(self.quant_type)[blocks.long()]
        return (values * self.block_absmax()[:, None]).reshape(-1)[: out * inp].reshape(out, inp)

    def stored_bytes(self) -> int:
        n = self.codes.numel()
        nb = -(-n // self.block)
        per_tensor = 16 * 4  # the code book (bitsandbytes' quant_map)
        if not self.double_quant:
            return -(-n // 2) + 4 * nb + per_tensor
        return -(-n // 2) + nb + 4 * self.absmax2.numel() + 4 + per_tensor + 256 * 4  # + mean, nested code book

    def state(self):
        if self.double_quant:
            return {"codes": self.codes, "qabsmax": self.qabsmax, "absmax2": self.absmax2,
                    "offset": self.offset.reshape(1)}
        return {"codes": self.codes, "absmax": self.absmax}

    def header(self):
        return {"block": self.block, "nested_block": self.nested_block, "double_quant": self.double_quant,
                "quant_type": self.quant_type}

    @classmethod
    def from_state(cls, state, header):
        offset = state.get("offset")
        return cls(state["codes"], state.get("absmax"), state.get("qabsmax"), state.get("absmax2"),
                   None if offset is None else offset.reshape(()), header["block"], header["nested_block"],
                   header.get("quant_type", "nf4"))

    def describe(self):
        return f"{self.quant_type} b{self.block}" + (" dq" if self.double_quant else "")


def _check(W: torch.Tensor) -> None:
    if W.ndim != 2:
        raise LowbitError(f"NF4 / FP4 quantize 2-D weights, got shape {tuple(W.shape)}: keep this tensor in float")


@dataclass
class NF4Fit:
    absmax: torch.Tensor        # (nblocks,) as stored (after double quantization)
    stored: tuple               # (absmax, None, None, None) or (None, qabsmax, absmax2, offset)
    cols: int                   # row length: weight (r, c) is in block (r * cols + c) // block


class NF4Grid(Grid):
    kind = "nf4"
    static_only = True  # double quantization couples 256 blocks' scales: fitted once, up front

    def __init__(self, block: int = BLOCK, double_quant: bool = True, nested_block: int = NESTED_BLOCK,
                 quant_type: str = "nf4"):
        self.block, self.double_quant, self.nested_block = block, double_quant, nested_block
        self.quant_type = quant_type
        self.code = code_book(quant_type)

    def _store(self, absmax: torch.Tensor):
        if not self.double_quant:
            return absmax, (absmax, None, None, None)
        q, a2, off = double_quantize(absmax, self.nested_block)
        return double_dequantize(q, a2, off, self.nested_block), (None, q, a2, off)

    def rtn(self, W, importance=None):
        _check(W)
        blocks, rem = _flat_blocks(W, self.block)
        absmax = blocks.abs().amax(dim=1)
        codes = _codes(blocks, absmax, rem, self.code).to(torch.uint8).reshape(-1)[: W.numel()].reshape(W.shape)
        _, stored = self._store(absmax)
        return NF4Tensor(codes, *stored, self.block, self.nested_block, self.quant_type)

    def fit(self, W, importance=None):
        _check(W)
        absmax = _flat_blocks(W, self.block)[0].abs().amax(dim=1)
        used, stored = self._store(absmax)
        return NF4Fit(used, stored, W.shape[1])

    def round_column(self, fitted, c, w):
        rows = torch.arange(w.numel())
        a = fitted.absmax[(rows * fitted.cols + c) // self.block]
        q = _nearest(_scaled(w.float()[:, None], a)[:, 0], self.code)
        return q.to(torch.uint8), self.code[q] * a

    def encode(self, fitted, codes, reordered=False):
        if reordered:
            raise ValueError("NF4 / FP4 blocks hold contiguous weights: they cannot follow a reordering")
        return NF4Tensor(codes.to(torch.uint8), *fitted.stored, self.block, self.nested_block, self.quant_type)

    def describe(self):
        return f"{self.quant_type} b{self.block}" + (" dq" if self.double_quant else "")


def _code_grid(quant_type: str):
    def factory(spec, auto_clip):
        block = spec.group_size if spec.group_size > 0 else BLOCK
        return NF4Grid(block, getattr(spec, "double_quant", True), quant_type=quant_type)
    return factory


register_grid("nf4")(_code_grid("nf4"))
register_grid("fp4")(_code_grid("fp4"))
