"""Golden fixtures for tests/formats/test_ggml_blocks.py: llama.cpp's own bytes for our inputs.

    bash bench/ggml_reference/build.sh SRC /tmp/ggml_ref          # SRC: llama.cpp or ggml tree
    python3 bench/ggml_reference/make_golden.py --lib /tmp/ggml_ref/libggml_ref.so \\
        --source "ggml-org/ggml@<commit>" [--out tests/data/ggml_golden/golden.npz]

Without --out it only reports how lowbit's bytes compare with the library's (use it to check
another llama.cpp version). The fixtures in the repo came from ggml-org/ggml
d99724f2b141fed9e1a9f402213506c081433465 (2026-08-21; its src/ggml-quants.c is llama.cpp's,
synced), built by build.sh (gcc 12, -O2, no FMA contraction, as llama.cpp builds on x86-64).
"""
from __future__ import annotations

import argparse
import ctypes
import json

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

ROWS, COLS = 16, 512          # per distribution: 2 super-blocks / 16 legacy blocks per row
KQUANTS = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
LEGACY = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
# Legacy types without importance are also checked against gguf-py, which equals llama.cpp
# except for the sign of a zero d or m; fixtures for two of them keep the file under 1 MB.
STORED_LEGACY_REF = [T.Q4_0, T.Q4_1]


def _bf16(x):
    """Round float32 to bfloat16 values (real checkpoints store weights this way)."""
    n = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return (((n + 0x7FFF + ((n >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


def _structured(rng):
    """Each 32-weight block one pattern: the edge cases of the scale searches."""
    pats = [
        lambda: np.zeros(32),
        lambda: np.full(32, 0.37),
        lambda: np.full(32, -0.37),
        lambda: np.eye(32)[rng.integers(32)] * 3.0,
        lambda: -np.eye(32)[rng.integers(32)] * 3.0,
        lambda: rng.standard_normal(32) * 1e-17,            # below llama.cpp's all-zero threshold
        lambda: rng.standard_normal(32) * 1e-6,             # fp16-subnormal scales
        lambda: rng.standard_normal(32) * 3e4,              # near fp16's range
        lambda: rng.standard_normal(32) * 3e6,              # super-scales overflow fp16 to inf
        lambda: np.tile([1.0, -1.0], 16) * 0.5,
        lambda: np.linspace(-1, 2, 32),
        lambda: np.where(np.arange(32) == 5, 50.0, rng.standard_normal(32) * 1e-3),  # one outlier
        lambda: rng.standard_normal(32) * 0.1 + 5.0,        # all positive, far from zero
        lambda: -np.abs(rng.standard_normal(32)) - 1e-3,    # all negative
    ]
    blocks = [pats[rng.integers(len(pats))]() for _ in range(ROWS * COLS // 32)]
    return np.concatenate(blocks).reshape(ROWS, COLS)


def inputs(seed: int = 1234):
    rng = np.random.default_rng(seed)
    n = (ROWS, COLS)
    row_scale = np.exp(rng.standard_normal((ROWS, 1)))
    outl = rng.random(n) < 0.005
    dists = {
        "normal": rng.standard_normal(n),
        "llm_bf16": _bf16(rng.standard_normal(n) * 0.02 * row_scale),
        "student_t3": rng.standard_t(3, n) * 0.02,
        "laplace_outliers_bf16": _bf16(rng.laplace(size=n) * 0.01 * (1 + 49 * outl)),
        "uniform": rng.uniform(-1, 1, n),
        "one_sided": np.abs(rng.standard_normal(n)) * np.where(np.arange(ROWS) % 2, 1, -1)[:, None] + 0.01,
        "on_grid": rng.integers(-8, 8, n) * 0.125,                 # many exact rounding ties
        "sparse": rng.standard_normal(n) * (rng.random(n) < 0.1),
        "structured": _structured(rng),
        "tiny": rng.standard_normal(n) * 1e-5,
    }
    lognormal = lambda: np.exp(1.5 * rng.standard_normal(COLS))
    imps = {name: lognormal() for name in dists}
    imps["normal"] = np.ones(COLS)
    imps["sparse"] = lognormal() * (rng.random(COLS) < 0.9)      # some columns never active
    imps["uniform"] = np.concatenate([lognormal()[:256], np.zeros(256)])  # a dead super-block
    f32 = lambda d: {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in d.items()}
    return f32(dists), f32(imps)


class Reference:
    def __init__(self, lib: str):
        self.fn = ctypes.CDLL(lib).lowbit_ref_quantize
        self.fn.restype = ctypes.c_int64

    def __call__(self, x, qtype, importance=None):
        bs, ts = GGML_QUANT_SIZES[qtype]
        out = np.zeros((x.shape[0], x.shape[1] // bs * ts), np.uint8)
        ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)
        qw = None if importance is None else ptr(importance)
        n = self.fn(int(qtype), ptr(x), ptr(out), x.shape[0], x.shape[1], qw)
        assert n == out.size, (qtype.name, n)
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--source", default="unknown", help="what the library was built from")
    ap.add_argument("--out")
    args = ap.parse_args()
    ref = Reference(args.lib)
    dists, imps = inputs()
    from lowbit.formats.ggml_blocks import quantize

    store = {"names": np.array(list(dists))}
    store["x"] = np.stack(list(dists.values()))          # (ndist, ROWS, COLS)
    store["importance"] = np.stack(list(imps.values()))  # (ndist, COLS)
    for qtype in LEGACY + KQUANTS:
        ts = GGML_QUANT_SIZES[qtype][1]
        for mode in ("ref", "imatrix"):
            if mode == "imatrix" and qtype == T.Q8_0:
                continue
            got = []
            same = total = gguf_same = 0
            for name, x in dists.items():
                imp = imps[name] if mode == "imatrix" else None
                b = ref(x, qtype, imp)
                got.append(b)
                ours = quantize(x, qtype, imp)
                same += (ours.reshape(-1, ts) == b.reshape(-1, ts)).all(axis=1).sum()
                total += b.size // ts
                if mode == "ref" and qtype in LEGACY:
                    g = gq.quantize(x, qtype).reshape(-1, ts)
                    gguf_same += (g == b.reshape(-1, ts)).all(axis=1).sum()
            if mode == "imatrix" or qtype not in LEGACY or qtype in STORED_LEGACY_REF:
                store[f"{qtype.name}_{mode}"] = np.stack(got)
            extra = f"  (gguf-py == llama.cpp: {gguf_same}/{total})" if gguf_same else ""
            print(f"{qtype.name:5s} {mode:8s} lowbit == llama.cpp: {same}/{total} blocks{extra}")
    store["meta"] = np.array(json.dumps({"source": args.source, "rows": ROWS, "cols": COLS}))
    if args.out:
        np.savez_compressed(args.out, **store)
        print("wrote", args.out)


if __name__ == "__main__":
    main()
