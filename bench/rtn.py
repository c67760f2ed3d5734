"""RTN of the default model: wall time and peak RSS, against baselines from the same run.

    python bench/rtn.py [--bits 4 --group-size 128]

Baselines: the time to load the float model, and the size of its fp32 checkpoint."""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import lowbit
from lowbit.eval.size import size_on_disk
from lowbit.io.default_model import default_model_dir
from lowbit.io.load import load_model


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    args = ap.parse_args()
    ckpt = default_model_dir()
    t0 = time.perf_counter()
    loaded = load_model(str(ckpt))
    load_s = time.perf_counter() - t0
    spec = lowbit.QuantSpec(bits=args.bits, group_size=args.group_size)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = lowbit.quantize(loaded, spec, Path(tmp) / "out")
        total_s = time.perf_counter() - t0
        out_size = size_on_disk(Path(tmp) / "out")
    rss, base = peak_rss(), size_on_disk(ckpt)
    print(f"model          {ckpt.name}  ({base / 1e6:.1f} MB fp32)")
    print(f"load (base)    {load_s:8.2f} s")
    print(f"rtn solve      {summary['quantize_seconds']:8.2f} s   ratio to load {summary['quantize_seconds'] / load_s:.2f}")
    print(f"rtn + write    {total_s:8.2f} s   ratio to load {total_s / load_s:.2f}")
    print(f"output         {out_size / 1e6:8.1f} MB   ratio to fp32 {out_size / base:.3f}")
    print(f"peak RSS       {rss / 1e6:8.1f} MB   ratio to fp32 checkpoint {rss / base:.2f}")


if __name__ == "__main__":
    main()
