"""Prefill and decode speed and peak memory of one model, batch 1, as `lowbit bench` reports
them: each model is measured in a process of its own (python -m lowbit.runtime.speed), so its
peak RSS is its own and not the sum of everything the run loaded.

prefill tokens/s = P / t(1 new token); decode tokens/s = (N - 1) / (t(N new tokens) - t(1)),
each time the median of `reps` repetitions after a warm-up, on the first P tokens of real text
(the evaluation split), EOS ignored so every run makes N tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(model_name: str | None, prompt_tokens: int = 128, new_tokens: int = 64, reps: int = 3,
            dtype: str = "float32", threads: int | None = None, compile: bool = False, exact: bool = False) -> dict:
    from lowbit.calibration.text import default_text, tokenize
    from lowbit.runtime.generate import generate_ids
    from lowbit.runtime.load import load_for_running, runtime_dtype

    if threads:
        torch.set_num_threads(threads)
    before = rss_bytes()
    t0 = time.perf_counter()
    loaded = load_for_running(model_name, runtime_dtype(dtype), exact=exact)
    load_seconds = time.perf_counter() - t0
    loaded_rss, load_peak = rss_bytes(), peak_rss_bytes()
    ids = tokenize(loaded.tokenizer, default_text("eval"))[:prompt_tokens].reshape(1, -1)
    if ids.shape[1] < prompt_tokens:
        raise ValueError(f"the evaluation text has only {ids.shape[1]} tokens")

    def timed(n: int) -> float:
        t = time.perf_counter()
        generate_ids(loaded.model, ids, n, min_new_tokens=n, eos=False, compile=compile)
        return time.perf_counter() - t

    timed(2)  # warm-up: first-call allocations, kernel choices, compiling
    if compile:
        timed(new_tokens)
    t1 = statistics.median(timed(1) for _ in range(reps))
    tn = statistics.median(timed(new_tokens) for _ in range(reps))
    weights = sum(b.numel() * b.element_size() for b in list(loaded.model.parameters()) + list(loaded.model.buffers()))
    return {"model": model_name or "default", "dtype": dtype, "compile": compile, "exact": exact, "threads": torch.get_num_threads(),
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "reps": reps,
            "prefill_tokens_per_s": prompt_tokens / t1,
            "decode_tokens_per_s": (new_tokens - 1) / max(tn - t1, 1e-9),
            "peak_rss_bytes": peak_rss_bytes(), "process_rss_before_load_bytes": before,
            "model_rss_bytes": loaded_rss - before, "load_peak_rss_bytes": load_peak - before,
            "weights_bytes": weights,
            "load_seconds": load_seconds, "kernels": loaded.meta.get("kernels", {})}


def measure_in_child(model_name: str | None, **kw) -> dict:
    """measure() in a fresh interpreter: its own peak RSS, nothing left from another model."""
    args = [sys.executable, "-m", "lowbit.runtime.speed", model_name or "default"]
    for k, v in kw.items():
        if v is True:
            args.append(f"--{k.replace('_', '-')}")
        elif v is not None and v is not False:
            args += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
        raise RuntimeError(f"measuring {model_name or 'the default model'} failed: {lines[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--exact", action="store_true")
    a = ap.parse_args()
    name = None if a.model == "default" else a.model
    print(json.dumps(measure(name, a.prompt_tokens, a.new_tokens, a.reps, a.dtype, a.threads, a.compile, a.exact)))


if __name__ == "__main__":
    main()


def recorded_base(model_name: str | None) -> str | None:
    """The model a quantized directory or GGUF file records it came from (lowbit.json, GGUF metadata)."""
    from pathlib import Path

    if model_name in (None, "", "default"):
        return None
    path = Path(model_name).expanduser()
    meta_file = path / "lowbit.json"
    if path.is_dir() and meta_file.is_file():
        return json.loads(meta_file.read_text()).get("base_model")
    if path.suffix.lower() == ".gguf" and path.is_file():
        from lowbit.io.gguf_reader import gguf_facts

        return gguf_facts(path).get("base_model")
    return None


def bench(model_name: str | None, base: str | None = "auto", **kw) -> dict:
    """measure() of the model, and of its base (the recorded one for "auto"; "none": no base)
    in the same run, each in its own process; ratios of the model to the base."""
    res = measure_in_child(model_name, **kw)
    base_name = recorded_base(model_name) if base in (None, "auto") else None if base == "none" else base
    if base_name:
        b = measure_in_child(base_name, **kw)
        res["base"] = b
        res["decode_speedup"] = res["decode_tokens_per_s"] / b["decode_tokens_per_s"]
        res["prefill_speedup"] = res["prefill_tokens_per_s"] / b["prefill_tokens_per_s"]
        res["peak_rss_ratio"] = res["peak_rss_bytes"] / b["peak_rss_bytes"]
    return res
