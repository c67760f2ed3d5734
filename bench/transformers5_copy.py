"""A transformers-5-saved copy of the default model against lowbit's own float directory of the
same weights: both quantized with the default method (GPTQ w4 g128), both evaluated on the same
text and windows. Run under transformers 5:

    python bench/transformers5_copy.py [--windows 40] [--work DIR]

Prints whether the two tokenizers give the same evaluation ids (eval tokenizes the text as one
stream without special tokens, so a BOS token is never added by either), the weights' equality,
and both perplexities with their ratio (bar: within 1%).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors import safe_open

import lowbit
from lowbit.calibration.text import default_text, tokenize
from lowbit.io.default_model import default_model_dir
from lowbit.io.hf_config import load_tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    assert transformers.__version__.startswith("5."), "run this under transformers 5"
    work = args.work or Path(tempfile.mkdtemp(prefix="t5copy-"))
    own = default_model_dir()
    copy = work / "saved-by-transformers-5"
    if not copy.is_dir():
        model = transformers.AutoModelForCausalLM.from_pretrained(str(own), dtype=torch.float32)
        model.save_pretrained(copy)
        transformers.AutoTokenizer.from_pretrained(str(own)).save_pretrained(copy)
    print("own dir written by transformers", json.loads((own / "config.json").read_text())["transformers_version"])
    print("copy written by transformers", json.loads((copy / "config.json").read_text())["transformers_version"])
    with safe_open(str(own / "model.safetensors"), "pt") as a, safe_open(str(copy / "model.safetensors"), "pt") as b:
        same = all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    print("weights identical:", same)
    text = default_text("eval")
    ids_own, ids_copy = tokenize(load_tokenizer(own), text), tokenize(load_tokenizer(copy), text)
    print("evaluation token ids identical:", torch.equal(ids_own, ids_copy), len(ids_own))
    res = {}
    for name, src in (("own", own), ("copy", copy)):
        out = work / f"{name}-gptq"
        if not out.is_dir():
            lowbit.quantize(str(src), "best-4bit", out)
        res[name] = lowbit.evaluate(str(out), max_windows=args.windows, cache_base=False)
        r = res[name]
        print(f"{name}: perplexity {r['perplexity']:.4f} base {r['base_perplexity']:.4f} KLD {r['kld']:.4f}", flush=True)
    ratio = res["copy"]["perplexity"] / res["own"]["perplexity"]
    print(f"perplexity copy / own = {ratio:.5f} ({ratio - 1:+.3%}; bar: within 1%)")


if __name__ == "__main__":
    main()
