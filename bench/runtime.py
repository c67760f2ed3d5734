"""Run what lowbit writes: decode and prefill speed and memory of packed checkpoints against
float in one run (issue 20's table).

    python bench/runtime.py [--prompt-tokens 128] [--new-tokens 64] [--prefill-tokens 512] [--reps 5]

Rows, each measured in a process of its own, one after another (nothing else running):
fp32 and bf16 (the default model), W8 (int8 weight-only kernel) and W4 g128 (int4 tinygemm) files
of the same model, eager and with torch.compile (--no-compile skips those), and llama.cpp (llama-cpp-python in its own venv, LOWBIT_LLAMACPP_PYTHON)
decoding lowbit's Q4_K_M GGUF. Decode: batch 1, `--threads` threads, new tokens after a
real-text prompt; median of reps. Also: the machine's copy bandwidth and each row's bound
(bandwidth / bytes of weights read per token), and a torch.profiler table of W4 decode steps.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
PEER = Path(os.environ.get("LOWBIT_LLAMACPP_PYTHON", "/work/peers/venv-llamacpp/bin/python"))


def checkpoints(root: Path, model: str | None = None) -> dict[str, Path]:
    """W8, W4 g128 (RTN: the same layout and kernels as GPTQ's static groups) and a Q4_K_M GGUF."""
    import lowbit

    made = {"W8": root / "w8", "W4 g128": root / "w4g128", "Q4_K_M": root / "q4km.gguf"}
    if not (made["W8"] / "config.json").is_file():
        lowbit.quantize(model, "w8", made["W8"], overwrite=True)
    if not (made["W4 g128"] / "config.json").is_file():
        lowbit.quantize(model, "w4g128", made["W4 g128"], overwrite=True)
    if not made["Q4_K_M"].is_file():
        lowbit.quantize(model, "w4g128", made["Q4_K_M"], format="gguf", gguf_type="Q4_K_M", overwrite=True)
    return made


def copy_bandwidth(threads: int) -> float:
    """Bytes moved per second by a 256 MB float32 copy (read + write), median of 7."""
    torch.set_num_threads(threads)
    a = torch.ones(64 << 20)
    b = torch.empty_like(a)
    times = []
    for _ in range(7):
        t = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - t)
    return 2 * a.numel() * 4 / statistics.median(times)


def llamacpp_row(gguf: Path, prompt_tokens: int, new_tokens: int, reps: int, threads: int,
                 model: str | None = None) -> dict | None:
    if not PEER.is_file():
        print(f"llama.cpp row skipped: no peer venv at {PEER} (LOWBIT_LLAMACPP_PYTHON)")
        return None
    from lowbit.calibration.text import default_text, tokenize
    from lowbit.io.default_model import default_model_dir
    from lowbit.io.hf_config import load_tokenizer

    tok = load_tokenizer(Path(model) if model else default_model_dir())
    ids = tokenize(tok, default_text("eval"))[:prompt_tokens].tolist()
    req = {"op": "speed", "model": str(gguf), "ids": ids, "new_tokens": new_tokens, "reps": reps, "threads": threads}
    r = subprocess.run([str(PEER), str(ROOT / "bench" / "llamacpp_run.py")], input=json.dumps(req),
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"llama.cpp failed: {r.stderr[-500:]}")
    return json.loads(r.stdout)


def profile_decode(model: Path, threads: int) -> str:
    code = f"""
import torch
from lowbit.calibration.text import default_text, tokenize
from lowbit.runtime.generate import generate_ids
from lowbit.runtime.load import load_for_running
torch.set_num_threads({threads})
loaded = load_for_running({str(model)!r})
ids = tokenize(loaded.tokenizer, default_text("eval"))[:128].reshape(1, -1)
generate_ids(loaded.model, ids, 4, min_new_tokens=4, eos=False)
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    generate_ids(loaded.model, ids, 17, min_new_tokens=17, eos=False)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def main() -> None:
    from lowbit.io.default_model import cache_dir
    from lowbit.runtime.speed import measure_in_child

    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where the checkpoints are kept (default: lowbit's cache)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (each compiles for ~1 min)")
    ap.add_argument("--model", default=None, help="a float model directory instead of the default model")
    ap.add_argument("--rows", default=None, help="comma-separated row names to run (default: all)")
    ap.add_argument("--save", default=None, help="write the rows as JSON to this file")
    a = ap.parse_args()
    import hashlib
    tag = "" if a.model is None else "-" + hashlib.sha1(str(Path(a.model).resolve()).encode()).hexdigest()[:8]
    root = Path(a.dir) if a.dir else cache_dir() / f"bench-runtime{tag}"
    files = checkpoints(root, a.model)
    # (model, activation dtype, torch.compile); eager rows are what `lowbit generate` runs by default
    rows = {"fp32": (None, "float32", False), "bf16": (None, "bfloat16", False),
            "W8": (files["W8"], "float32", False), "W4 g128": (files["W4 g128"], "float32", False),
            "W4 g128 bf16": (files["W4 g128"], "bfloat16", False)}
    if not a.no_compile:
        rows |= {"fp32 compiled": (None, "float32", True), "bf16 compiled": (None, "bfloat16", True),
                 "W8 compiled": (files["W8"], "float32", True), "W4 g128 compiled": (files["W4 g128"], "float32", True)}
    if a.model is not None:  # the float rows are that model
        rows = {k: (a.model if m is None else m, d, c) for k, (m, d, c) in rows.items()}
    if a.rows:
        keep = [r.strip() for r in a.rows.split(",")]
        rows = {k: v for k, v in rows.items() if k in keep or k in ("fp32", "bf16")}  # ratios need the float rows
    res = {}
    for name, (model, dtype, compiled) in rows.items():
        kw = dict(dtype=dtype, reps=a.reps, threads=a.threads, compile=compiled)
        r = measure_in_child(str(model) if model else None, prompt_tokens=a.prompt_tokens, new_tokens=a.new_tokens, **kw)
        p = measure_in_child(str(model) if model else None, prompt_tokens=a.prefill_tokens, new_tokens=2, **kw)
        r["prefill_512_tokens_per_s"] = p["prefill_tokens_per_s"]
        res[name] = r
        print(f"{name}: decode {r['decode_tokens_per_s']:.1f} tok/s, prefill {r['prefill_tokens_per_s']:.1f}, "
              f"prefill@{a.prefill_tokens} {r['prefill_512_tokens_per_s']:.1f}, peak RSS {r['peak_rss_bytes'] / 1e6:.0f} MB",
              flush=True)
    lc = llamacpp_row(files["Q4_K_M"], a.prompt_tokens, a.new_tokens, a.reps, a.threads, a.model)
    if lc is not None:
        lp = llamacpp_row(files["Q4_K_M"], a.prefill_tokens, 2, a.reps, a.threads, a.model)
        lc["prefill_512_tokens_per_s"] = lp["prefill_tokens_per_s"]
        lc["weights_bytes"] = files["Q4_K_M"].stat().st_size
        lc["model_rss_bytes"] = None
        res["llama.cpp Q4_K_M"] = lc
    bw = copy_bandwidth(a.threads)
    fp32 = res["fp32"]
    print(f"\ncopy bandwidth {bw / 1e9:.1f} GB/s (read + write, {a.threads} threads); batch 1, "
          f"{a.prompt_tokens}-token prompt, {a.new_tokens} new tokens, median of {a.reps}\n")
    print("| row | decode tok/s | x fp32 | bound tok/s | of bound | prefill tok/s | prefill@%d | peak RSS | "
          "model RSS | x fp32 (model RSS) | load peak (above start) | weights read / token |" % a.prefill_tokens)
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in res.items():
        bound = bw / r["weights_bytes"]
        mr = r.get("model_rss_bytes")
        print(f"| {name} | {r['decode_tokens_per_s']:.1f} | {r['decode_tokens_per_s'] / fp32['decode_tokens_per_s']:.2f} | "
              f"{bound:.0f} | {r['decode_tokens_per_s'] / bound:.0%} | {r['prefill_tokens_per_s']:.0f} | "
              f"{r['prefill_512_tokens_per_s']:.0f} | {r['peak_rss_bytes'] / 1e6:.0f} MB | "
              + (f"{mr / 1e6:.0f} MB | {mr / fp32['model_rss_bytes']:.2f} | {r['load_peak_rss_bytes'] / 1e6:.0f} MB | "
                 if mr is not None else "- | - | - | ")
              + f"{r['weights_bytes'] / 1e6:.0f} MB |")
    if a.save:
        Path(a.save).write_text(json.dumps({"copy_bandwidth_bytes_per_s": bw, "rows": res}, indent=2))
    if not {"W4 g128", "W8"} <= set(res):
        return
    w4, w8, bf16 = res["W4 g128"], res["W8"], res["bf16"]
    print(f"\nW4 g128 decode {w4['decode_tokens_per_s'] / fp32['decode_tokens_per_s']:.2f}x fp32 (bar 2), "
          f"{w4['decode_tokens_per_s'] / bf16['decode_tokens_per_s']:.2f}x bf16 (bar 1); "
          f"W8 {w8['decode_tokens_per_s'] / fp32['decode_tokens_per_s']:.2f}x fp32 (bar 1.3); "
          f"W4 model RSS {w4['model_rss_bytes'] / fp32['model_rss_bytes']:.2f}x fp32's (bar 0.35), "
          f"peak process RSS {w4['peak_rss_bytes'] / fp32['peak_rss_bytes']:.2f}x")
    if "W4 g128 compiled" in res:
        w4c, f32c, bf16c = res["W4 g128 compiled"], res["fp32 compiled"], res["bf16 compiled"]
        print(f"compiled: W4 g128 decode {w4c['decode_tokens_per_s'] / f32c['decode_tokens_per_s']:.2f}x compiled fp32, "
              f"{w4c['decode_tokens_per_s'] / bf16c['decode_tokens_per_s']:.2f}x compiled bf16, "
              f"W8 {res['W8 compiled']['decode_tokens_per_s'] / f32c['decode_tokens_per_s']:.2f}x compiled fp32")
    if lc is not None:
        for name in ("W4 g128", "W4 g128 compiled"):
            if name in res:
                print(f"{name} decode {res[name]['decode_tokens_per_s'] / lc['decode_tokens_per_s']:.2f}x "
                      "llama.cpp's Q4_K_M (goal 0.5)")
    if not a.no_profile:
        print("\ntorch.profiler, 16 decode steps of W4 g128 (self CPU time):\n")
        print(profile_decode(files["W4 g128"], a.threads))


if __name__ == "__main__":
    main()
