"""Every method lowbit has against the peers, on the default model, in one table.

    python bench/methods.py [--rows NAME,...] [--save DIR] [--windows 40] [--peers-dir /work/peers]
                            [--texts wiki,code,legal]

Each row quantizes in a child process of its own, one after another (its seconds and peak RSS
are its own, read as VmHWM: ru_maxrss would carry the parent's RSS at the fork): lowbit's through lowbit.quantize (compressed-tensors, read back from disk), each
peer with its runner script in bench/peers/ and the Python of its own virtual environment
(PEERS_DIR/venv-NAME, see each script's docstring for the exact pins). Everyone gets the same
128 x 512 calibration ids (lowbit's default mix of Wikipedia, Gutenberg and the Debian handbook,
seed 0) in the same order, and every result is judged on the same evaluation windows against
the float model: perplexity, KLD, top-1 agreement, on the held-out Wikipedia text and on two
domains no calibration text contains (C source code, license texts). Bits per weight count what each file stores for
the quantized Linears (codes, scales, zero points, g_idx); for the peers that is their own
packed format's cost (bench/peers/*.py say how), while their weights are evaluated dequantized.
--save keeps each row's result in DIR/ROW.json, and a later run reuses it (resume): delete the
file to redo a row. The model's weights passed through Q4_1 (32-weight blocks): groups of 32 are
nearly lossless for it, so the table compares g64 / g128 / per channel, and 3 bits."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import save_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from common import EVAL_TEXTS, setup_domains  # noqa: E402

from lowbit.eval.perplexity import evaluate_many  # noqa: E402
from lowbit.eval.size import bits_per_weight  # noqa: E402
from lowbit.io.default_model import default_model_dir  # noqa: E402
from lowbit.io.load import load_model  # noqa: E402

LOWBIT_CHILD = """
import json, sys
from safetensors.torch import load_file
import lowbit
from lowbit.spec import QuantSpec
model_dir, calib, out, spec_json = sys.argv[1:5]
ids = load_file(calib)["input_ids"]
spec = QuantSpec(**json.loads(spec_json))
s = lowbit.quantize(model_dir, spec, out, calib=ids)
print(json.dumps({"seconds": s["quantize_seconds"], "peak_rss_bytes": int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024}))
"""

# name -> (tool, settings): lowbit rows give a QuantSpec; peer rows a script, its venv and argv
W4G64 = dict(bits=4, group_size=64, symmetric=False)
ROWS = {
    # 4-bit, g64 asym: the setting every peer accepts on 576-wide rows
    "lowbit rtn w4 g64 asym": ("lowbit", dict(method="rtn", **W4G64)),
    "lowbit hqq w4 g64 asym": ("lowbit", dict(method="hqq", **W4G64)),
    "lowbit awq w4 g64 asym": ("lowbit", dict(method="awq", **W4G64)),
    "lowbit gptq w4 g64 asym": ("lowbit", dict(method="gptq", **W4G64)),
    "lowbit awq+gptq w4 g64 asym": ("lowbit", dict(method="gptq", **W4G64, method_args={"smooth": "awq"})),
    "lowbit rot+gptq w4 g64 asym": ("lowbit", dict(method="gptq", **W4G64, method_args={"rotate": "hadamard"})),
    "llm-compressor awq w4 g64 asym": ("llmcompressor", ("llmcompressor_awq.py", "4", "64", "0")),
    "llm-compressor gptq w4 g64 asym": ("llmcompressor", ("llmcompressor_gptq.py", "4", "64", "0")),
    "gptqmodel gptq w4 g64 asym": ("gptqmodel", ("gptqmodel_gptq.py", "4", "64", "0")),
    "hqq w4 g64": ("hqq", ("hqq_quant.py", "4", "64", "float16")),
    "lowbit signround w4 g64 asym": ("lowbit", dict(method="signround", **W4G64)),
    "auto-round w4 g64 asym": ("autoround", ("autoround_quant.py", "4", "64", "0")),
    "bnb nf4 (double quant)": ("lowbit-venv", ("bnb_nf4.py", "1")),
    # 4-bit g128 (lowbit's layouts store 96-wide groups on 576-wide rows) and per channel
    "lowbit gptq w4 g128": ("lowbit", dict(method="gptq", bits=4, group_size=128)),
    "lowbit rot+gptq w4 g128": ("lowbit", dict(method="gptq", bits=4, group_size=128, method_args={"rotate": "hadamard"})),
    "lowbit rot+gptq w4 g128 asym": ("lowbit", dict(method="gptq", bits=4, group_size=128, symmetric=False,
                                                    method_args={"rotate": "hadamard"})),
    "lowbit signround w4 g128": ("lowbit", dict(method="signround", bits=4, group_size=128)),
    "lowbit signround w4 g128 layer targets": ("lowbit", dict(method="signround", bits=4, group_size=128,
                                                              method_args={"targets": "layer"})),
    "lowbit rot+signround w4 g128": ("lowbit", dict(method="signround", bits=4, group_size=128,
                                                    method_args={"rotate": "hadamard"})),
    "auto-round w4 g128 sym": ("autoround", ("autoround_quant.py", "4", "128", "1")),
    "auto-round w4 g128 sym 50 iters": ("autoround", ("autoround_quant.py", "4", "128", "1", "50")),
    "gptqmodel gptq w4 g128 sym": ("gptqmodel", ("gptqmodel_gptq.py", "4", "128", "1")),
    "lowbit gptq w4 per channel": ("lowbit", dict(method="gptq", bits=4, group_size=-1)),
    "lowbit rot+gptq w4 per channel": ("lowbit", dict(method="gptq", bits=4, group_size=-1,
                                                      method_args={"rotate": "hadamard"})),
    # 3-bit
    "lowbit hqq w3 g64 asym": ("lowbit", dict(method="hqq", bits=3, group_size=64, symmetric=False)),
    "hqq w3 g64": ("hqq", ("hqq_quant.py", "3", "64", "float16")),
    "lowbit gptq w3 g128": ("lowbit", dict(method="gptq", bits=3, group_size=128)),
    "lowbit rot+gptq w3 g128": ("lowbit", dict(method="gptq", bits=3, group_size=128, method_args={"rotate": "hadamard"})),
}


def run(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else "failed"}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_seconds"] = time.perf_counter() - t0
    return res


def quantize_row(name, tool, settings, model_dir, calib_file, out, peers_dir) -> dict:
    if tool == "lowbit":
        res = run([sys.executable, "-c", LOWBIT_CHILD, model_dir, calib_file, out, json.dumps(settings)])
    else:
        script, *args = settings
        python = sys.executable if tool == "lowbit-venv" else f"{peers_dir}/venv-{tool}/bin/python"
        if not Path(python).is_file():
            return {"error": f"no venv {python}"}
        res = run([python, str(HERE / "peers" / script), model_dir, calib_file, out, *args])
    if "error" in res:
        return res
    peer = Path(out) / "peer.json"
    res["bits_per_weight"] = (json.loads(peer.read_text()).get("bits_per_weight") if peer.is_file()
                              else bits_per_weight(out))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", help="comma-separated row names (default: all)")
    ap.add_argument("--save", help="directory of per-row results, reused by a later run")
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--peers-dir", default=os.environ.get("LOWBIT_PEERS_DIR", "/work/peers"))
    ap.add_argument("--texts", default=",".join(EVAL_TEXTS), help="evaluation texts (the first is in-domain)")
    args = ap.parse_args()
    names = [n.strip() for n in args.rows.split(",")] if args.rows else list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        sys.exit(f"unknown rows {unknown}: choose from {list(ROWS)}")
    save = Path(args.save) if args.save else None
    if save:
        save.mkdir(parents=True, exist_ok=True)
    texts = args.texts.split(",")
    base, calib, wins = setup_domains(128, 512, args.windows, 0, texts)
    model_dir = str(default_model_dir())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        calib_file = f"{tmp}/calib.safetensors"
        save_file({"input_ids": calib.contiguous()}, calib_file)
        for name in names:
            cached = save / (name.replace(" ", "_").replace("/", "-") + ".json") if save else None
            if cached is not None and cached.is_file():
                results[name] = json.loads(cached.read_text())
                print(f"{name}: saved result reused", flush=True)
                continue
            out = f"{tmp}/{len(results)}"
            tool, settings = ROWS[name]
            r = quantize_row(name, tool, settings, model_dir, calib_file, out, args.peers_dir)
            if "error" not in r:
                model = load_model(out).model
                for text in texts:  # the first text's keys plain, the others' prefixed by the text
                    got = evaluate_many({name: model}, wins[text], base.model)[name]
                    r.update(got if text == texts[0] else {f"{text}_{k}": v for k, v in got.items()})
                del model
            r = {k: v for k, v in r.items() if isinstance(v, (int, float, str)) or v is None}
            results[name] = r
            print(f"{name}: {json.dumps(r)}", flush=True)
            if cached is not None:
                cached.write_text(json.dumps(r, indent=1))
    first = texts[0]
    print(f"\ndefault model, 128 x 512 calibration tokens (same ids for all; default mix), eval "
          f"{wins[first].numel()} tokens per text; KLD on {', '.join(texts)} ({', '.join(texts[1:])}: domains "
          f"calibration lacks); base perplexity on {first} "
          f"{next((r['base_perplexity'] for r in results.values() if 'base_perplexity' in r), float('nan')):.3f}")
    kld_cols = " | ".join(f"KLD {t}" for t in texts)
    print(f"| {'row':<34} | bits/w | perplexity | {kld_cols} | top-1 | seconds | peak RSS MB |")
    print("|---|---|---|" + "---|" * len(texts) + "---|---|---|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name:<34} | failed: {r['error'][:90]} |")
            continue
        bpw = f"{r['bits_per_weight']:.3f}" if r.get("bits_per_weight") else "-"
        klds = " | ".join(f"{r.get('kld' if t == first else f'{t}_kld', float('nan')):.4f}" for t in texts)
        print(f"| {name:<34} | {bpw} | {r['perplexity']:.3f} | {klds} | {r.get('top1_agreement', float('nan')):.3f} | "
              f"{r['seconds']:.1f} | {r['peak_rss_bytes'] / 1e6:.0f} |")


if __name__ == "__main__":
    main()
