"""GPTQ speed on the default model (128 x 512 calibration tokens), against a peer run in
the same benchmark on the same calibration ids, and both perplexities.

    python bench/gptq_speed.py [--group-size 64] [--peer-python /path/to/venv/bin/python]
        [--gptqmodel-python /path/to/other/venv/bin/python]

Each peer lives in its own virtual environment, never in lowbit's dependencies:
llm-compressor: python -m venv V && V/bin/pip install torch==2.13.0 'llmcompressor==0.14.*';
GPTQModel: python -m venv V && V/bin/pip install torch==2.13.0 gptqmodel==7.6.0 (see
peers/gptqmodel_gptq.py). Each quantizer runs in a child process, one after the other, so that
its time and peak RSS are its own. The speed-up is against the fastest peer."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import save_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from common import setup  # noqa: E402

from lowbit.eval.perplexity import evaluate_many  # noqa: E402
from lowbit.io.default_model import default_model_dir  # noqa: E402
from lowbit.io.load import load_model  # noqa: E402

LOWBIT_CHILD = """
import json, resource, sys, time
from safetensors.torch import load_file
import lowbit
from lowbit.io.load import load_model
from lowbit.pipeline import quantize_model
from lowbit.io import compressed_tensors as ct
from lowbit.io.checkpoint import save_quantized
model_dir, calib, out, bits, group, sym, forward_dtype = sys.argv[1:8]
ids = load_file(calib)["input_ids"]
loaded = load_model(model_dir)
spec = lowbit.QuantSpec(method="gptq", bits=int(bits), group_size=int(group), symmetric=sym == "1",
                        method_args={"forward_dtype": forward_dtype})
t0 = time.perf_counter()
res = quantize_model(loaded.model, spec, ids, fit_layout=ct.fit_layout)
seconds = time.perf_counter() - t0
save_quantized(out, loaded.model, loaded.tokenizer, res.tensors, {"base_model": model_dir})
print(json.dumps({"seconds": seconds, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "forward_dtype": res.forward_dtype}))
"""


def run(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed",
                "seconds": None, "peak_rss_bytes": None}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_seconds"] = time.perf_counter() - t0
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--forward-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="lowbit's calibration forwards (auto, the default: bfloat16 autocast on CPUs with "
                         "AVX-512 BF16 / AMX, else float32)")
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--peer-python", help="python of a venv with llmcompressor installed")
    ap.add_argument("--gptqmodel-python", help="python of a venv with gptqmodel installed")
    args = ap.parse_args()
    base, calib, wins = setup(128, 512, args.windows)
    model_dir = str(default_model_dir())
    sym = "0" if args.asym else "1"
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        calib_file = f"{tmp}/calib.safetensors"
        save_file({"input_ids": calib.contiguous()}, calib_file)
        common = [model_dir, calib_file]
        rows["lowbit"] = run([sys.executable, "-c", LOWBIT_CHILD, *common, f"{tmp}/lowbit",
                              str(args.bits), str(args.group_size), sym, args.forward_dtype])
        if args.peer_python:
            rows["llm-compressor"] = run([args.peer_python, str(HERE / "peers" / "llmcompressor_gptq.py"),
                                          *common, f"{tmp}/llm-compressor", str(args.bits), str(args.group_size), sym])
        if args.gptqmodel_python:
            rows["GPTQModel"] = run([args.gptqmodel_python, str(HERE / "peers" / "gptqmodel_gptq.py"),
                                     *common, f"{tmp}/GPTQModel", str(args.bits), str(args.group_size), sym])
        models = {name: load_model(f"{tmp}/{name}").model for name, r in rows.items() if r.get("seconds") is not None}
        ppl = evaluate_many(models, wins, base.model)
    print(f"GPTQ w{args.bits} g{args.group_size} {'asym' if args.asym else 'sym'}, lowbit forwards in "
          f"{rows['lowbit'].get('forward_dtype', args.forward_dtype)} (--forward-dtype {args.forward_dtype}), "
          "128 x 512 calibration tokens, "
          f"eval {wins.numel()} tokens; base perplexity {next(iter(ppl.values()))['base_perplexity']:.3f}")
    print(f"{'tool':<16}{'seconds':>10}{'peak RSS MB':>13}{'perplexity':>12}{'KLD':>9}")
    for name, r in rows.items():
        p = ppl.get(name, {})
        secs = f"{r['seconds']:.1f}" if r.get("seconds") else r.get("error", "-")[:40]
        rss = f"{r['peak_rss_bytes'] / 1e6:.0f}" if r.get("peak_rss_bytes") else "-"
        print(f"{name:<16}{secs:>10}{rss:>13}{p.get('perplexity', float('nan')):>12.3f}{p.get('kld', float('nan')):>9.4f}")
    peers = {n: r["seconds"] for n, r in rows.items() if n != "lowbit" and r.get("seconds")}
    if peers and rows["lowbit"].get("seconds"):
        for name, secs in peers.items():
            print(f"speed-up of lowbit over {name}: {secs / rows['lowbit']['seconds']:.2f}x, perplexity "
                  f"{ppl['lowbit']['perplexity']:.3f} vs {ppl[name]['perplexity']:.3f}")
        fastest = min(peers, key=peers.get)
        print(f"against the fastest peer ({fastest}): {peers[fastest] / rows['lowbit']['seconds']:.2f}x "
              "(goal >= 1.5x at equal or better perplexity)")


if __name__ == "__main__":
    main()
