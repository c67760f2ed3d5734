"""Memory-bounded scale: quantize a model bigger than the memory cap it runs under.

Generates (once, layer by layer, never whole in memory) a random-weight Llama checkpoint
of several GB in safetensors shards, then runs `lowbit quantize` on it in a child process
watched every 20 ms: the child is killed if its RSS passes the cap. Prints peak RSS against
the checkpoint size.

    python bench/scale_rss.py [--dir /tmp/lowbit-scale] [--cap-gb 2.5] [--method gptq|rtn]
                              [--dtype float32|float16|bfloat16] [--format gguf --gguf-type Q4_K_M]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

# TinyLlama-1.1B's shape with the default model's 49152-token vocabulary: 4.7 GB in float32
CONFIG = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=49152, hidden_size=2048,
              intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
              max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
              hidden_act="silu", torch_dtype="float32", bos_token_id=1, eos_token_id=2)


def generate(path: Path, dtype: str = "float32") -> int:
    """Write the checkpoint one layer per shard, in `dtype`; returns its size in bytes."""
    if (path / "model.safetensors.index.json").is_file():
        return sum(p.stat().st_size for p in path.glob("*.safetensors"))
    torch_dtype = getattr(torch, dtype)
    path.mkdir(parents=True, exist_ok=True)
    c = CONFIG
    h, f, kv = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"] * c["num_key_value_heads"]
    gen = torch.Generator().manual_seed(0)

    def w(o, i):
        return (torch.randn(o, i, generator=gen) * (1.0 / i ** 0.5)).to(torch_dtype)

    def ones(n):
        return torch.ones(n, dtype=torch_dtype)

    shards = [{"model.embed_tokens.weight": w(c["vocab_size"], h), "model.norm.weight": ones(h),
               "lm_head.weight": w(c["vocab_size"], h)}]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shards.append({p + "self_attn.q_proj.weight": w(h, h), p + "self_attn.k_proj.weight": w(kv, h),
                       p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, h),
                       p + "mlp.gate_proj.weight": w(f, h), p + "mlp.up_proj.weight": w(f, h),
                       p + "mlp.down_proj.weight": w(h, f), p + "input_layernorm.weight": ones(h),
                       p + "post_attention_layernorm.weight": ones(h)})
    weight_map, total = {}, 0
    for k, tensors in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(path / name), metadata={"format": "pt"})
        weight_map.update({t: name for t in tensors})
        total += (path / name).stat().st_size
        shards[k] = None  # free as we go
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({**CONFIG, "torch_dtype": dtype}))
    from transformers import AutoTokenizer

    from lowbit.io.default_model import default_model_dir
    # the default model's tokenizer (any BPE does for random weights)
    AutoTokenizer.from_pretrained(str(default_model_dir())).save_pretrained(path)
    return total


def rss_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def tree_rss(pid: int) -> int:
    """RSS of pid and its children (the CLI may spawn none, but be honest if it does)."""
    total = rss_of(pid)
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for c in child.read_text().split():
            total += tree_rss(int(c))
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/lowbit-scale")
    ap.add_argument("--cap-gb", type=float, default=2.5)
    ap.add_argument("--method", default="gptq", choices=["gptq", "rtn"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                    help="the checkpoint's dtype (released checkpoints are mostly bf16/fp16)")
    ap.add_argument("--format", default="compressed-tensors", help="output format (gguf: one file)")
    ap.add_argument("--gguf-type", default="Q4_K_M", help="--format gguf: the llama.cpp file type")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in DIR/.out.lowbit-partial (e.g. one the watchdog stopped)")
    args = ap.parse_args()
    root = Path(args.dir)
    t0 = time.perf_counter()
    model_dir = root / f"model-{args.dtype}"
    size = generate(model_dir, args.dtype)
    print(f"checkpoint: {size / 1e9:.2f} GB in {len(list(model_dir.glob('*.safetensors')))} shards "
          f"({time.perf_counter() - t0:.0f} s to generate)")
    gguf = args.format == "gguf"
    out = root / ("out.gguf" if gguf else "out")
    shutil.rmtree(out, ignore_errors=True)
    out.unlink(missing_ok=True) if gguf else None
    cap = int(args.cap_gb * 1e9)
    calib = ["--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen)] if args.method == "gptq" else []
    grid = ["--format", "gguf", "--gguf-type", args.gguf_type] if gguf else \
        ["--format", args.format, "--bits", "4", "--group-size", "128", "--max-shard-bytes", str(512 << 20)]
    cmd = [sys.executable, "-m", "lowbit.cli", "quantize", str(model_dir), "-o", str(out),
           "--method", args.method, *grid, *calib, "--no-eval"] + (["--resume"] if args.resume else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        if peak > cap:
            proc.kill()
            proc.wait()
            sys.exit(f"FAILED: RSS {peak / 1e9:.2f} GB passed the cap {args.cap_gb} GB")
        time.sleep(0.02)
    if proc.returncode != 0:
        sys.exit(f"quantize failed with exit {proc.returncode}")
    out_size = out.stat().st_size if gguf else sum(p.stat().st_size for p in out.glob("*.safetensors"))
    what = args.gguf_type if gguf else "w4 g128"
    print(f"quantized ({args.method} {what}, {args.dtype} checkpoint) in {time.perf_counter() - t0:.0f} s -> {out_size / 1e9:.2f} GB")
    print(f"peak RSS {peak / 1e9:.2f} GB = {peak / size:.2f}x the checkpoint ({size / 1e9:.2f} GB); "
          f"cap {args.cap_gb} GB")


if __name__ == "__main__":
    main()
