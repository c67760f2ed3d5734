"""How much bf16 evaluation forwards move perplexity and KLD, and how fast they are, against
float32 forwards measured in the same run; and the KLD's standard error over windows.

    python bench/eval_dtype.py OUT_DIR [OUT_DIR ...] [--windows 40]

Each OUT_DIR is a model lowbit wrote (its base is the model it records). Both evaluations use
the same windows; the base's hidden states are not cached, so both times include the base.
"""
from __future__ import annotations

import argparse
import time

import torch

from lowbit.api import evaluate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--windows", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(2)
    print("| model | dtype | perplexity | base perplexity | KLD | KLD stderr (rel) | top-1 | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for m in args.models:
        res = {}
        for dtype in ("float32", "bfloat16"):
            t0 = time.perf_counter()
            r = evaluate(m, max_windows=args.windows, eval_dtype=dtype, cache_base=False)
            r["seconds"] = time.perf_counter() - t0
            res[dtype] = r
            print(f"| {m} | {dtype} | {r['perplexity']:.4f} | {r['base_perplexity']:.4f} | {r['kld']:.5f} | "
                  f"{r['kld_stderr']:.5f} ({r['kld_stderr'] / r['kld']:.1%}) | {r['top1_agreement']:.4f} | "
                  f"{r['seconds']:.1f} |", flush=True)
        a, b = res["float32"], res["bfloat16"]
        print(f"bf16 vs fp32 on {m}: perplexity {b['perplexity'] / a['perplexity'] - 1:+.3%}, "
              f"base perplexity {b['base_perplexity'] / a['base_perplexity'] - 1:+.3%}, "
              f"KLD {b['kld'] / a['kld'] - 1:+.3%}, time ratio {a['seconds'] / b['seconds']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
