"""Run Intel's AutoRound (SignRound; in its own virtual environment) on given calibration ids, on CPU.

    PEER_PYTHON peers/autoround_quant.py MODEL_DIR CALIB.safetensors OUT BITS GROUP SYM [ITERS]

Venv: python3 -m venv V && V/bin/pip install torch==2.13.0 && V/bin/pip install torch==2.13.0
auto-round==0.16.1 (pure Python on CPU; brings transformers 5.25.0). Settings: AutoRound's
default algorithm (SignRound, alg_configs "signround") with ITERS steps (200 by default, its
default; lr 1/ITERS, its default), batch size min(8, N) (its default 8), nsamples = N rows of CALIB,
seqlen = T, its default fp16 scale dtype, every Linear in the decoder blocks quantized (AutoRound
never quantizes lm_head unless asked), device_map "cpu", amp off: AutoRound's CPU default casts the
whole model to bfloat16, which would also round the embeddings and norms; off, it tunes and keeps
everything in float32 like the other peers. GROUP <= 0 is per channel (-1). The ids are given
as a list of {"input_ids", "attention_mask" of ones} rows in file order (a list skips its own
dataset loading; no shuffle, no length filter since every row has length T).

Group sizes: AutoRound groups along the input columns and zero-pads each row up to a multiple
of GROUP (auto_round.data_type.utils.reshape_pad_tensor_by_group_size), so it accepts GROUP 128
on SmolLM2-135M's 576-wide rows: each row gets 4 full groups and one last group of 64 real
columns + 64 zero pads (the pads take part in that group's min/max). 32 and 64 divide 576 exactly.
It only skips (keeps in 16 bits) int layers whose out or in features are not multiples of 32.

OUT is "dequantized": after quantize() AutoRound leaves each tuned Linear's weight set to its
quantize-dequantize value (wrapper.unwrapper copies qdq_weight in; the scales/zeros kept beside
it are what its packers would store), saved as a plain float32 HF model plus the tokenizer;
AutoRound's own packed "auto_round" format was not used. OUT/peer.json: tool, version, settings,
bits_per_weight (its auto_round/GPTQ-style packing: BITS per weight plus per group one fp16 scale
and one BITS-bit packed zero, stored for sym too; groups per row = ceil(columns / GROUP)), seconds.
Prints one JSON line: wall seconds of quantize() and the process's peak RSS."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import json
import math
import sys
import time
from importlib.metadata import version

import torch
from auto_round import AutoRound
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, calib, out, bits, group, sym = sys.argv[1:7]
bits, group, sym = int(bits), int(group), sym == "1"
iters = int(sys.argv[7]) if len(sys.argv) > 7 else 200
g = group if group > 0 else -1
ids = load_file(calib)["input_ids"]
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(model_dir)
rows = [{"input_ids": r[None], "attention_mask": torch.ones_like(r)[None]} for r in ids]
ar = AutoRound(model, tokenizer=tok, scheme="W4A16", bits=bits, group_size=g, sym=sym, dataset=rows,
               iters=iters, nsamples=ids.shape[0], seqlen=ids.shape[1], batch_size=min(8, ids.shape[0]),
               device_map="cpu", amp=False)
t0 = time.perf_counter()
qmodel, layer_config = ar.quantize()
seconds = time.perf_counter() - t0

qmodel = qmodel if isinstance(qmodel, torch.nn.Module) else ar.model
n_w, stored, n_q = 0, 0, 0
for name, mod in qmodel.named_modules():
    if isinstance(mod, torch.nn.Linear) and getattr(mod, "scale", None) is not None:
        rows_, cols = mod.weight.shape
        n_groups = rows_ * (math.ceil(cols / group) if group > 0 else 1)
        n_w, stored, n_q = n_w + mod.weight.numel(), stored + bits * mod.weight.numel() + n_groups * (16 + bits), n_q + 1
if n_q == 0:
    sys.exit("no quantized Linear found after quantize()")
# a fresh float model receives the tensors, so no AutoRound attribute or config is saved
state = {k: v.float() for k, v in qmodel.state_dict().items()}
clean = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
missing = [k for k in clean.state_dict() if k not in state]
if missing:
    sys.exit(f"state incomplete: missing {missing[:5]}")
clean.load_state_dict({k: state[k] for k in clean.state_dict()})
clean.save_pretrained(out)
tok.save_pretrained(out)
with open(os.path.join(out, "peer.json"), "w") as f:
    json.dump({"tool": "auto-round", "version": version("auto-round"),
               "settings": {"method": "AutoRound (SignRound)", "bits": bits, "group_size": group, "sym": sym,
                            "iters": iters, "nsamples": ids.shape[0], "seqlen": ids.shape[1],
                            "batch_size": min(8, ids.shape[0]), "amp": False, "scale_dtype": "float16",
                            "ignore": ["lm_head"], "quantized_linears": n_q},
               "bits_per_weight": stored / n_w,
               "bits_formula": "bits + (16 + bits) * ceil(cols / group) / cols",
               "seconds": seconds}, f, indent=1)
print(json.dumps({"seconds": seconds, "peak_rss_bytes": int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024}))
