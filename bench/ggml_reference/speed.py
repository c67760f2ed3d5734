"""Time lowbit.formats.ggml_blocks.quantize on the default model's matrix shapes.

    python3 bench/ggml_reference/speed.py [--types Q4_K,Q5_0] [--lib libggml_ref.so]

SmolLM2-135M: 30 layers of q,o (576x576), k,v (192x576), gate,up (1536x576), down (576x1536)
plus the 49152x576 embedding: 134.5M weights. Rows of 576 do not divide into k-quant
super-blocks (llama.cpp then falls back to another type), so for k-quants each matrix is timed
as rows of 256 (the same number of super-blocks, the same work). Random Gaussian weights with
a 0.02 scale; importance log-normal. With --lib, llama.cpp's C code (one thread) on the same
arrays, for scale.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from lowbit.formats.ggml_blocks import quantize

SHAPES = [((576, 576), 60), ((192, 576), 60), ((1536, 576), 60), ((576, 1536), 30), ((49152, 576), 1)]


def matrices(block: int):
    rng = np.random.default_rng(0)
    for (rows, cols), count in SHAPES:
        W = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
        if cols % block:
            W = W.reshape(-1, block)
        yield W, count


def timed(fn, W, count, full):
    """Seconds for `count` matrices like W: all of them if full, else one times count."""
    reps = count if full else 1
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(W)
    return (time.perf_counter() - t0) * count / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="Q4_K,Q5_K,Q6_K,Q3_K,Q2_K,Q8_0,Q4_0,Q4_1,Q5_0,Q5_1")
    ap.add_argument("--lib", help="libggml_ref.so from build.sh: also time llama.cpp's C code")
    ap.add_argument("--full", action="store_true", help="quantize every matrix, not one per shape")
    args = ap.parse_args()
    ref = None
    if args.lib:
        import sys
        sys.path.insert(0, os.path.dirname(__file__))
        from make_golden import Reference
        ref = Reference(args.lib)
    total = sum(r * c * n for (r, c), n in SHAPES)
    print(f"{total / 1e6:.1f}M weights, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name in args.types.split(","):
        qtype = T[name]
        block = GGML_QUANT_SIZES[qtype][0]
        row = [f"{name:5s}"]
        for with_imp in (False, True):
            ours = theirs = 0.0
            for W, count in matrices(block):
                imp = None
                if with_imp:
                    imp = np.exp(np.random.default_rng(1).standard_normal(W.shape[1])).astype(np.float32)
                ours += timed(lambda A: quantize(A, qtype, imp), W, count, args.full)
                if ref is not None:
                    theirs += timed(lambda A: ref(A, qtype, imp), W, count, args.full)
            label = "imatrix" if with_imp else "ref"
            row.append(f"{label} {ours:6.1f} s" + (f" (llama.cpp C {theirs:5.1f} s)" if ref else ""))
        print("  ".join(row), flush=True)


if __name__ == "__main__":
    main()
