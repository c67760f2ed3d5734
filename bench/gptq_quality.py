"""GPTQ against round-to-nearest on the default model, at the issue's three settings.

    python bench/gptq_quality.py [--windows 40] [--asym] [--act-order] [--clip mse] [--smooth on]
        [--settings 4:128,3:128,4:-1] [--calib wiki] [--texts wiki,code,legal]

Prints, per evaluation text, perplexity, KLD, and the ratio of GPTQ's perplexity increase over
the base to RTN's (the bar: <= 0.5). Calibration: 128 x 512 tokens (seed 0) of the default mix
(Wikipedia, Gutenberg, Debian handbook in equal parts) or of --calib (named texts or a file);
evaluation: --windows x 512 tokens of each text: the held-out Wikipedia paragraphs and two domains
no calibration text contains (C code, license texts); `handbook` / `gutenberg` are their held-out
parts. Group sizes are the ones written to compressed-tensors (128 -> 96 on 576-wide rows)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import EVAL_TEXTS, quantized_copy, setup_domains  # noqa: E402

from lowbit.eval.perplexity import evaluate_many  # noqa: E402
from lowbit.spec import QuantSpec  # noqa: E402

SETTINGS = [(4, 128), (3, 128), (4, -1)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--no-act-order", action="store_true", help="gptq in natural column order")
    ap.add_argument("--forward-dtype", default="auto", help="calibration forward passes: auto, float32 or bfloat16")
    ap.add_argument("--clip", default="auto", help="grid clipping: auto (rtn minmax, gptq mse), minmax or mse")
    ap.add_argument("--smooth", default="auto", help="on: weight-only smoothing before RTN and GPTQ alike")
    ap.add_argument("--settings", default=",".join(f"{b}:{g}" for b, g in SETTINGS), help="bits:group_size,...")
    ap.add_argument("--damp", type=float, default=0.01, help="gptq dampening (fraction of the mean Hessian diagonal)")
    ap.add_argument("--calib", help="calibration texts: names joined by + (wiki, gutenberg, handbook, ...) or a file")
    ap.add_argument("--texts", default=",".join(EVAL_TEXTS), help="evaluation texts")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    settings = [tuple(int(v) for v in item.split(":")) for item in args.settings.split(",")]
    texts = args.texts.split(",")
    base, calib, wins_by_text = setup_domains(args.nsamples, 512, args.windows, 0, texts, args.calib)
    models, times = {}, {}
    gptq_args = {"act_order": not args.no_act_order, "forward_dtype": args.forward_dtype, "smooth": args.smooth,
                 "damp_percent": args.damp}
    for bits, g in settings:
        for method in ("rtn", "gptq"):
            spec = QuantSpec(method=method, bits=bits, group_size=g, symmetric=not args.asym, clip=args.clip,
                             method_args=gptq_args if method == "gptq" else {"smooth": args.smooth})
            name = f"{method} w{bits} g{g}"
            t0 = time.perf_counter()
            models[name], _ = quantized_copy(base.model, spec, calib)
            times[name] = time.perf_counter() - t0
            print(f"quantized {name} in {times[name]:.1f} s", flush=True)
    grid = "asym" if args.asym else "sym"
    rows = []
    print(f"\ncalibration {args.calib or 'default mix'}; {grid}, clip {args.clip}, gptq {gptq_args}")
    for text in texts:
        wins = wins_by_text[text]
        res = evaluate_many(models, wins, base.model)
        base_ppl = next(iter(res.values()))["base_perplexity"]
        print(f"\n{text}: base perplexity {base_ppl:.3f} on {wins.numel()} tokens ({len(wins)} x 512)")
        print(f"{'setting':<12}{'RTN ppl':>10}{'GPTQ ppl':>10}{'RTN KLD':>10}{'GPTQ KLD':>10}{'ratio':>8}  bar <= 0.5")
        for bits, g in settings:
            r, q = res[f"rtn w{bits} g{g}"], res[f"gptq w{bits} g{g}"]
            ratio = (q["perplexity"] - base_ppl) / (r["perplexity"] - base_ppl)
            rows.append({"text": text, "base_perplexity": base_ppl, "bits": bits, "group_size": g, "rtn": r,
                         "gptq": q, "ratio": ratio, "gptq_seconds": times[f"gptq w{bits} g{g}"]})
            print(f"w{bits} g{g:<8}{r['perplexity']:>10.3f}{q['perplexity']:>10.3f}{r['kld']:>10.4f}"
                  f"{q['kld']:>10.4f}{ratio:>8.3f}  {'ok' if ratio <= 0.5 else 'MISSED'}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
