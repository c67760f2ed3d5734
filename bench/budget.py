"""The bit-budget planner against uniform settings of no greater size, on the default model.

    python bench/budget.py [--target-bpw 3.5] [--windows 24] [--nsamples 64] [--save DIR]

Plans a setting per Linear at the target (lowbit.plan_bits: GPTQ's error at each candidate,
weighted by the loss's sensitivity), then quantizes the planned recipe and each uniform GPTQ
setting whose bits per weight is at most the planned mix's (and, for scale, the smallest uniform
setting above it), all with the same 128 x 512
calibration ids, each in a child process, and judges them on the same windows of three texts
(Wikipedia held out; code and licenses, which calibration lacks): bits per weight read from the
files, the planner's predicted loss, perplexity, KLD, top-1. --save keeps each row's result in
DIR/ROW.json for a later run to reuse."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import save_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from common import EVAL_TEXTS, setup_domains  # noqa: E402

import lowbit  # noqa: E402
from lowbit.eval.perplexity import evaluate_many  # noqa: E402
from lowbit.eval.size import bits_per_weight  # noqa: E402
from lowbit.io.load import load_model  # noqa: E402
from lowbit.recipe import Recipe  # noqa: E402

CHILD = """
import json, sys
from safetensors.torch import load_file
import lowbit
from lowbit.recipe import Recipe
recipe, calib, out = sys.argv[1:4]
s = lowbit.quantize(None, Recipe.load(recipe).spec, out, calib=load_file(calib)["input_ids"])
print(json.dumps({"seconds": s["quantize_seconds"]}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target-bpw", type=float, default=3.5)
    ap.add_argument("--windows", type=int, default=24)
    ap.add_argument("--nsamples", type=int, default=64, help="planner calibration samples of 512 tokens")
    ap.add_argument("--save", help="directory of per-row results, reused by a later run")
    args = ap.parse_args()
    save = Path(args.save) if args.save else None
    if save:
        save.mkdir(parents=True, exist_ok=True)
    base, calib, wins = setup_domains(128, 512, args.windows, 0, EVAL_TEXTS)
    plan_file = save / "plan.json" if save else None
    if plan_file is not None and plan_file.is_file():
        plan = json.loads(plan_file.read_text())
    else:
        plan = lowbit.plan_bits(None, target_bpw=args.target_bpw, nsamples=args.nsamples)
        if plan_file is not None:
            plan_file.write_text(json.dumps(plan))
    planned = plan["planned"]
    rows = {f"planned mix at {args.target_bpw}": (plan["recipe"], planned["predicted_error"])}
    # every uniform setting of no greater size, and the smallest one above the plan (for scale)
    above = min((u for u in plan["uniform"] if u["bits_per_weight"] > planned["bits_per_weight"] + 1e-9),
                key=lambda u: u["bits_per_weight"], default=None)
    for u in plan["uniform"]:
        if u["bits_per_weight"] <= planned["bits_per_weight"] + 1e-9 or u is above:
            bits, _, group = u["setting"][1:].partition("g")
            recipe = {"method": "gptq", "bits": int(bits), "group_size": int(group) if group else -1}
            tag = "" if u is not above else " (larger than the plan)"
            rows[f"uniform gptq {u['setting']}{tag}"] = (recipe, u["predicted_error"])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        calib_file = f"{tmp}/calib.safetensors"
        save_file({"input_ids": calib.contiguous()}, calib_file)
        for k, (name, (recipe, predicted)) in enumerate(rows.items()):
            cached = save / (name.replace(" ", "_") + ".json") if save else None
            if cached is not None and cached.is_file():
                results[name] = json.loads(cached.read_text())
                continue
            rfile, out = Path(tmp) / f"r{k}.yaml", f"{tmp}/out{k}"
            rfile.write_text(Recipe.from_dict(recipe, name).to_yaml())
            proc = subprocess.run([sys.executable, "-c", CHILD, str(rfile), calib_file, out],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                results[name] = {"error": proc.stderr.strip().splitlines()[-1]}
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r.update(bits_per_weight=bits_per_weight(out), predicted=predicted)
            model = load_model(out).model
            for text in EVAL_TEXTS:
                got = evaluate_many({name: model}, wins[text], base.model)[name]
                r.update({f"{text}_{key}": got[key] for key in ("perplexity", "kld", "top1_agreement")})
            del model
            results[name] = r
            print(f"{name}: {json.dumps(r)}", flush=True)
            if cached is not None:
                cached.write_text(json.dumps(r, indent=1))
    print(f"\nplan: {json.dumps(planned['settings'])}")
    cols = " | ".join(f"KLD {t}" for t in EVAL_TEXTS)
    print(f"| row | bits/w | predicted loss | perplexity {EVAL_TEXTS[0]} | {cols} | top-1 | seconds |")
    print("|---|---|---|---|" + "---|" * len(EVAL_TEXTS) + "---|---|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | failed: {r['error'][:100]} |")
            continue
        klds = " | ".join(f"{r[f'{t}_kld']:.4f}" for t in EVAL_TEXTS)
        print(f"| {name} | {r['bits_per_weight']:.3f} | {r['predicted']:.4g} | {r[f'{EVAL_TEXTS[0]}_perplexity']:.3f} | "
              f"{klds} | {r[f'{EVAL_TEXTS[0]}_top1_agreement']:.3f} | {r['seconds']:.0f} |")
    uniform = [r for n, r in results.items() if n.startswith("uniform") and "larger" not in n and "error" not in r]
    mix = next(iter(results.values()))
    if uniform and "error" not in mix:
        for t in EVAL_TEXTS:
            best = min(r[f"{t}_kld"] for r in uniform)
            print(f"{t}: planned KLD / best uniform of no greater size = {mix[f'{t}_kld'] / best:.3f}")


if __name__ == "__main__":
    main()
