"""Quantize with bitsandbytes NF4 (calibration-free) on CPU, in the lowbit venv.

    /work/venv6/bin/python peers/bnb_nf4.py MODEL_DIR CALIB.safetensors OUT [DOUBLE_QUANT=1]

No venv of its own: bitsandbytes 0.50.2 is installed beside lowbit (CPU backend, no CUDA). CALIB
is accepted and ignored: NF4 uses no data. Settings: every nn.Linear but lm_head through
bitsandbytes.functional.quantize_4bit(W, blocksize=64, quant_type="nf4",
compress_statistics=DOUBLE_QUANT) on the float32 weight (transformers' load_in_4bit path calls
the same function, on the weight in the load dtype). Blocks are 64 consecutive elements of the
row-major weight, so on 576- or 1536-wide rows (multiples of 64) a block is 64 input columns
of one row. Double quant (1, the default, as QLoRA uses it) stores each block's absmax as 8-bit
blockwise-quantized in blocks of 256 absmaxes with one float32 absmax each (plus one float32 offset
per tensor); without it each block's absmax is float32.

OUT is "dequantized": each weight replaced by dequantize_4bit() of its packed NF4 values, saved as
a plain float32 HF model plus the tokenizer; bitsandbytes' own serialized 4-bit format was not
used. OUT/peer.json: tool, version, settings, bits_per_weight (4 + 32/64 = 4.5 without double
quant, 4 + 8/64 + 32/(64*256) ~= 4.127 with it), seconds. Prints one JSON line: wall seconds of
quantizing all Linears and the process's peak RSS."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import json
import sys
import time
from importlib.metadata import version

import bitsandbytes.functional as bnbf
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, calib, out = sys.argv[1:4]
double = (sys.argv[4] if len(sys.argv) > 4 else "1") == "1"
block = 64
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(model_dir)
linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
packed = []
t0 = time.perf_counter()
for name, lin in linears:
    packed.append(bnbf.quantize_4bit(lin.weight.data, blocksize=block, quant_type="nf4",
                                     compress_statistics=double))
seconds = time.perf_counter() - t0
for (name, lin), (q, state) in zip(linears, packed):
    with torch.no_grad():
        lin.weight.copy_(bnbf.dequantize_4bit(q, state, quant_type="nf4").float())
model.save_pretrained(out)
tok.save_pretrained(out)
bpw = 4 + (8 / block + 32 / (block * 256) if double else 32 / block)
with open(os.path.join(out, "peer.json"), "w") as f:
    json.dump({"tool": "bitsandbytes", "version": version("bitsandbytes"),
               "settings": {"method": "NF4", "bits": 4, "group_size": block, "double_quant": double,
                            "ignore": ["lm_head"], "calibration": None, "quantized_linears": len(linears)},
               "bits_per_weight": bpw,
               "bits_formula": "4 + 8/64 + 32/(64*256) with double quant, else 4 + 32/64",
               "seconds": seconds}, f, indent=1)
print(json.dumps({"seconds": seconds, "peak_rss_bytes": int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024}))
