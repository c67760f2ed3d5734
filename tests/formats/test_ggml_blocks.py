"""GGML block quantizers against independent references:
gguf-py's dequantizer (every type), gguf-py's quantizer (legacy types), and bytes that
llama.cpp's own C code wrote (tests/data/ggml_golden, made by bench/ggml_reference)."""
from __future__ import annotations

import ctypes
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from lowbit.formats import ggml_blocks as gb
from peers import installed_llama_cpp_lib
from lowbit.formats.ggml_search import seqsum

GOLDEN = Path(__file__).parents[1] / "data" / "ggml_golden" / "golden.npz"
LEGACY = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
KQUANTS = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
BLOCK_TYPES = LEGACY + KQUANTS
CODE_BITS = {T.Q8_0: 8, T.Q4_0: 4, T.Q4_1: 4, T.Q5_0: 5, T.Q5_1: 5,
             T.Q2_K: 2, T.Q3_K: 3, T.Q4_K: 4, T.Q5_K: 5, T.Q6_K: 6, T.F16: 11, T.BF16: 8}


def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(rows=64, cols=512, seed=0):
    return _rng(seed).standard_normal((rows, cols)).astype(np.float32)


def _importance(cols=512, seed=1):
    return np.exp(1.5 * _rng(seed).standard_normal(cols)).astype(np.float32)


def _deq(blocks, qtype, shape):
    return gguf.quants.dequantize(blocks, qtype).reshape(shape)


def _structured(cols=512):
    """Rows of 32-weight blocks that stress the edges: zeros, constants, outliers, one sign."""
    rng = _rng(7)
    blocks = [np.zeros(32), np.full(32, 0.3), np.full(32, -0.3), np.eye(32)[3] * 5,
              -np.abs(rng.standard_normal(32)), np.abs(rng.standard_normal(32)) + 2,
              rng.standard_normal(32) * 1e-6, rng.standard_normal(32) * 1e3,
              np.where(np.arange(32) == 9, 40.0, rng.standard_normal(32) * 0.01),
              rng.integers(-8, 8, 32) * 0.25]
    rows = [np.concatenate([blocks[(r + k) % len(blocks)] for k in range(cols // 32)])
            for r in range(2 * len(blocks))]
    return np.stack(rows).astype(np.float32)


# ---- the summation order the byte-exactness rests on

@pytest.mark.parametrize("B", [1, 2, 3, 7, 8, 9, 64, 1000])
@pytest.mark.parametrize("n", [8, 16, 32, 256, 576])
def test_seqsum_adds_in_index_order(n, B):
    a = (_rng(n * B).standard_normal((n, B)) * np.exp(4 * _rng(1).standard_normal((n, B)))).astype(np.float32)
    acc = a[0].copy()
    for row in a[1:]:
        acc += row
    assert np.array_equal(seqsum(a), acc)


# ---- 1. every type: the oracle dequantizer reconstructs within the type's error

@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.BF16] + BLOCK_TYPES)
@pytest.mark.parametrize("with_importance", [False, True])
def test_dequantized_error_within_the_types_bits(qtype, with_importance):
    W = _normal()
    imp = _importance() if with_importance else None
    out = gb.quantize(W, qtype, imp)
    bs, ts = GGML_QUANT_SIZES[qtype]
    assert out.dtype == np.uint8 and out.shape == (64, 512 // bs * ts)
    err = W - _deq(out, qtype, W.shape)
    if qtype == T.F32:
        assert np.array_equal(err, np.zeros_like(W))
        return
    snr = 10 * np.log10((W.astype(np.float64) ** 2).sum() / (err.astype(np.float64) ** 2).sum())
    # uniform code of b bits over a Gaussian block's range (~4.1 sigma for 32 values):
    # SNR ~ 20 log10(2**b - 1) - 1.5 dB; 3 dB of slack for scale quantization and clipping
    b = CODE_BITS[qtype]
    assert snr >= 20 * np.log10(2**b - 1) - 4.5, (qtype.name, snr)
    if qtype in gb.CODECS and imp is None:   # importance may trade unimportant weights' error
        qmax = gb.CODECS[qtype].qmax
        xb, eb = W.reshape(-1, 32), np.abs(err).reshape(-1, 32)
        span = xb.max(1) - np.minimum(xb.min(1), 0)
        assert (eb.max(1) <= 2 * span / qmax).all(), qtype.name   # a misplaced code errs by ~span


def test_importance_lowers_the_weighted_error():
    W = _rng(3).standard_t(4, (64, 512)).astype(np.float32)
    imp = _importance(seed=5) ** 2
    for qtype in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1] + KQUANTS:
        def weighted(importance):
            e = W - _deq(gb.quantize(W, qtype, importance), qtype, W.shape)
            return float((imp * e.astype(np.float64) ** 2).sum())
        assert weighted(imp) < weighted(None), qtype.name


# ---- 2. legacy types: byte-identical to gguf-py

def _legacy_inputs():
    rng = _rng(11)
    return {
        "normal": _normal(32, 256, seed=2),
        "heavy": (rng.standard_t(2, (32, 256)) * 0.02).astype(np.float32),
        "bf16_like": (rng.standard_normal((32, 256)) * 0.02).astype(np.float32),
        "structured": _structured(256),
        "zeros": np.zeros((4, 256), np.float32),
        "constant": np.full((4, 256), -1.25, np.float32),
    }


@pytest.mark.parametrize("qtype", [T.F16, T.BF16] + LEGACY)
def test_legacy_bytes_equal_gguf_py(qtype):
    for name, W in _legacy_inputs().items():
        ours = gb.quantize(W, qtype)
        theirs = np.asarray(gguf.quants.quantize(W, qtype)).view(np.uint8).reshape(ours.shape)
        assert np.array_equal(ours, theirs), (qtype.name, name)


def test_signed_zero_blocks_follow_llama_cpp_not_gguf_py():
    """An all-zero block whose first value is -0.0: llama.cpp's scans keep +0 (Q4_0: d = -0.0),
    gguf-py's argmax picks the -0.0 (d = +0.0). Same values, one sign bit apart; we follow C."""
    W = np.zeros((1, 32), np.float32)
    W[0, 0] = -0.0
    assert gb.quantize(W, T.Q4_0)[0, :2].tolist() == [0, 0x80]
    assert np.asarray(gguf.quants.quantize(W, T.Q4_0))[0, :2].tolist() == [0, 0]


# ---- 3. byte-exact against llama.cpp's C code

@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


def _golden_cases(golden):
    for key in golden:
        name, _, mode = key.rpartition("_")
        if mode in ("ref", "imatrix"):
            yield key, T[name], mode


def test_golden_fixtures_cover_every_block_type(golden):
    meta = json.loads(str(golden["meta"]))
    assert "d99724f" in meta["source"]
    covered = {(q, m) for _, q, m in _golden_cases(golden)}
    for q in KQUANTS:
        assert {(q, "ref"), (q, "imatrix")} <= covered
    for q in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]:
        assert (q, "imatrix") in covered
    assert GOLDEN.stat().st_size < 1_000_000


def test_bytes_equal_llama_cpp(golden):
    xs, imps, names = golden["x"], golden["importance"], golden["names"]
    report = []
    for key, qtype, mode in _golden_cases(golden):
        ts = GGML_QUANT_SIZES[qtype][1]
        for i, name in enumerate(names):
            want = golden[key][i]
            got = gb.quantize(xs[i], qtype, imps[i] if mode == "imatrix" else None)
            same = (got.reshape(-1, ts) == want.reshape(-1, ts)).all(axis=1)
            if not same.all():
                e_ours = ((xs[i] - _deq(got, qtype, xs[i].shape)) ** 2).sum()
                e_c = ((xs[i] - _deq(want, qtype, xs[i].shape)) ** 2).sum()
                report.append(f"{key}/{name}: {same.mean():.4f} blocks equal, "
                              f"squared error {e_ours:.6g} vs llama.cpp {e_c:.6g}")
    assert not report, "\n".join(report)


@pytest.mark.skipif(installed_llama_cpp_lib() is None, reason="llama.cpp peer venv not found")
def test_bytes_equal_an_installed_llama_cpp(golden):
    """A second, independently built llama.cpp: its ggml_quantize_chunk on the fixture inputs."""
    fn = ctypes.CDLL(str(installed_llama_cpp_lib())).ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_void_p]
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)
    for qtype in BLOCK_TYPES:
        bs, ts = GGML_QUANT_SIZES[qtype]
        for i, x in enumerate(golden["x"]):
            for imp in (None, golden["importance"][i]):
                want = np.zeros((x.shape[0], x.shape[1] // bs * ts), np.uint8)
                fn(int(qtype), ptr(x), ptr(want), 0, x.shape[0], x.shape[1], None if imp is None else ptr(imp))
                assert np.array_equal(gb.quantize(x, qtype, imp), want), (qtype.name, str(golden["names"][i]))


# ---- 4. grid interface

def _grid_cases():
    for qtype in BLOCK_TYPES:
        for imp in (False, True):
            yield pytest.param(qtype, imp, id=f"{qtype.name}-{'imatrix' if imp else 'ref'}")


@pytest.mark.parametrize("qtype,with_importance", list(_grid_cases()))
def test_grid_is_the_one_quantize_chose(qtype, with_importance):
    W = np.concatenate([_normal(24, 512, seed=4), _structured(512)[:8]])
    imp = _importance() if with_importance else None
    grid = gb.fit_grid(W, qtype, imp)
    blocks = gb.quantize(W, qtype, imp)
    deq = _deq(blocks, qtype, W.shape)
    # every value quantize() produced is a point of the grid ...
    q = gb.round_to_grid(grid, deq)
    assert np.array_equal(grid.dequantize(q), deq)
    # ... and the grid's header bytes are quantize()'s, code bits aside
    codec = gb.CODECS[qtype]
    code_bits = (codec.pack_codes(np.full((1, codec.block), codec.qmax, np.uint8))
                 | codec.pack_codes(np.zeros((1, codec.block), np.uint8)))[0]
    assert np.array_equal(grid.header.reshape(-1, codec.type_size),
                          blocks.reshape(-1, codec.type_size) & ~code_bits)


@pytest.mark.parametrize("qtype,with_importance", list(_grid_cases()))
def test_encode_round_trips_through_gguf_py(qtype, with_importance):
    W = _normal(16, 512, seed=8)
    imp = _importance() if with_importance else None
    grid = gb.fit_grid(W, qtype, imp)
    assert grid.shape == W.shape and grid.scale.dtype == np.float32
    assert grid.scale.shape == grid.offset.shape == (16, 512 // grid.sub)  # one pair per sub-block
    assert grid.sub == {T.Q2_K: 16, T.Q3_K: 16, T.Q6_K: 16, T.Q4_K: 32, T.Q5_K: 32}.get(qtype, 32)
    scale, offset = grid.per_weight()
    W2 = W + 0.3 * _normal(16, 512, seed=9)             # a GPTQ-updated matrix on the same grid
    for q in (gb.round_to_grid(grid, W2),
              _rng(10).integers(0, grid.qmax + 1, W.shape).astype(np.uint8)):
        blocks = gb.encode(grid, q)
        assert blocks.shape == gb.quantize(W, qtype, imp).shape
        assert np.array_equal(_deq(blocks, qtype, W.shape), scale * q.astype(np.float32) - offset)


@pytest.mark.parametrize("qtype", BLOCK_TYPES)
def test_round_to_grid_is_nearest(qtype):
    W = _normal(8, 256, seed=12)
    grid = gb.fit_grid(W, qtype)
    W2 = W * 1.5                                          # some values beyond the grid: clamped
    q = gb.round_to_grid(grid, W2).astype(np.int64)
    codes = np.arange(grid.qmax + 1)
    scale, offset = grid.per_weight()
    values = scale[..., None].astype(np.float64) * codes - offset[..., None]
    best = np.abs(values - W2[..., None]).min(axis=-1)
    chosen = np.abs(np.take_along_axis(values, q[..., None], axis=-1)[..., 0] - W2)
    assert np.allclose(chosen, best, rtol=0, atol=1e-6 * np.abs(W2).max())
    # one column at a time, as GPTQ rounds
    for c in (0, 17, 255):
        assert np.array_equal(gb.round_to_grid(grid, W2[:, c:c + 1], cols=slice(c, c + 1)), q[:, c:c + 1])


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q8_0, T.Q3_K])
def test_fit_grid_on_single_blocks(qtype):
    bs = GGML_QUANT_SIZES[qtype][0]
    W = _normal(5, bs, seed=13)
    grid = gb.fit_grid(W, qtype)
    assert grid.header.shape == (5, 1, GGML_QUANT_SIZES[qtype][1])
    assert np.array_equal(gb.encode(grid, gb.round_to_grid(grid, W)).shape, gb.quantize(W, qtype).shape)


# ---- refusals

def test_bad_input_is_refused_with_a_reason():
    W = _normal(2, 256)
    with pytest.raises(ValueError, match="multiple of 256"):
        gb.quantize(W[:, :96], T.Q4_K)
    with pytest.raises(ValueError, match="NaN"):
        gb.quantize(np.full((1, 32), np.nan, np.float32), T.Q4_0)
    with pytest.raises(ValueError, match="non-negative"):
        gb.quantize(W, T.Q4_K, -np.ones(256, np.float32))
    with pytest.raises(ValueError, match=r"shape \(256,\)"):
        gb.quantize(W, T.Q4_K, np.ones(128, np.float32))
    with pytest.raises(NotImplementedError, match="IQ4_NL"):
        gb.quantize(W, T.IQ4_NL)
    with pytest.raises(ValueError, match="float type"):
        gb.fit_grid(W, T.F16)
    grid = gb.fit_grid(W, T.Q4_0)
    with pytest.raises(ValueError, match="0..15"):
        gb.encode(grid, np.full(W.shape, 16))
    with pytest.raises(ValueError, match="integers"):
        gb.encode(grid, np.full(W.shape, 2.5))
