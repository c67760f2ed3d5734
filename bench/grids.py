"""Issue 18's comparisons on the default model, one run, nothing else running: lowbit's int8
schemes (W8A8 with and without SmoothQuant, LLM.int8()) and microscaling / code-book grids, beside
bitsandbytes' own LLM.int8() and NF4 (transformers + bitsandbytes quantizing the float model
itself, in this venv: bitsandbytes is a test dependency). Every row: lowbit eval on the same
24 x 512 evaluation windows (lowbit eval's default) against the float model.

    python bench/grids.py [--rows w8a8-rtn,w8a8,llm-int8,bnb-llm-int8,...] [--json OUT]

torchao's Int8DynamicActivationInt8WeightConfig (row torchao-w8a8) and Int8WeightOnlyConfig (row
torchao-weight-only) run in torchao's own venv (LOWBIT_TORCHAO_PYTHON, default
/work/peers/venv-torchao/bin/python: torch 2.13.0, torchao 0.18.0 and lowbit -e) through
bench/peers/torchao_int8.py, on the same windows.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import lowbit
from lowbit.io.default_model import default_model_dir
from lowbit.io.loaded import Loaded
from lowbit.io.load import load_model
from lowbit.spec import preset

LOWBIT_ROWS = {  # row -> (preset, format)
    "w8a8-rtn": ("w8a8-rtn", "compressed-tensors"),
    "w8a8": ("w8a8", "compressed-tensors"),
    "llm-int8": ("llm-int8", "bnb"),
    "nf4": ("nf4", "bnb"),
    "gptq-nf4": ("gptq-nf4", "bnb"),
    "fp4": ("fp4", "bnb"),
    "gptq-fp4": ("gptq-fp4", "bnb"),
    "mxfp4": ("mxfp4", "compressed-tensors"),
    "gptq-mxfp4": ("gptq-mxfp4", "compressed-tensors"),
    "nvfp4": ("nvfp4", "compressed-tensors"),
    "gptq-nvfp4": ("gptq-nvfp4", "compressed-tensors"),
    "fp8": ("fp8", "compressed-tensors"),
    "w8": ("w8", "compressed-tensors"),
}
PEER_ROWS = ("bnb-llm-int8", "bnb-nf4", "bnb-fp4")
TORCHAO = Path(os.environ.get("LOWBIT_TORCHAO_PYTHON", "/work/peers/venv-torchao/bin/python"))


def _row(name: str, ev: dict, seconds: float | None) -> dict:
    keys = ("perplexity", "base_perplexity", "kld", "top1_agreement", "bits_per_weight", "size_bytes")
    return {"row": name, **{k: ev.get(k) for k in keys}, "quantize_seconds": seconds}


def lowbit_row(name: str, work: Path) -> dict:
    preset_name, fmt = LOWBIT_ROWS[name]
    s = lowbit.quantize(None, preset(preset_name), work / name, format=fmt)
    return _row(f"lowbit {name}", lowbit.evaluate(str(work / name)), s["quantize_seconds"])


def bnb_row(name: str) -> dict:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cfg = (BitsAndBytesConfig(load_in_8bit=True) if name == "bnb-llm-int8" else
           BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=name.removeprefix("bnb-"),
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32))
    src = default_model_dir()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(src), quantization_config=cfg, dtype=torch.float32).eval()
    seconds = time.perf_counter() - t0
    base = load_model(None)
    ev = lowbit.evaluate(Loaded(model, base.tokenizer, f"bitsandbytes {name}", "hf"), base=base)
    return _row(name, ev, seconds)


def torchao_row(name: str) -> dict:
    script = Path(__file__).parent / "peers" / "torchao_int8.py"
    out = subprocess.run([str(TORCHAO), str(script), name.removeprefix("torchao-")], check=True,
                         capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return _row(name, r["eval"], r["quantize_seconds"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="w8a8-rtn,w8a8,llm-int8,bnb-llm-int8")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows.split(","):
            if name.startswith("torchao-"):
                rows.append(torchao_row(name))
            else:
                rows.append(bnb_row(name) if name in PEER_ROWS else lowbit_row(name, Path(tmp)))
            r = rows[-1]
            print(f"{r['row']:<22} bpw {r['bits_per_weight'] or float('nan'):6.3f}  ppl {r['perplexity']:8.3f} "
                  f"(float {r['base_perplexity']:.3f})  KLD {r['kld']:.4f}  top-1 {r['top1_agreement']:.4f}  "
                  f"quantize {r['quantize_seconds'] or 0:.1f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
