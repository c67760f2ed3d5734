"""Run HQQ (Half-Quadratic Quantization, calibration-free; in its own virtual environment) on CPU.

    PEER_PYTHON peers/hqq_quant.py MODEL_DIR CALIB.safetensors OUT BITS GROUP [COMPUTE_DTYPE]

Venv: python3 -m venv V && V/bin/pip install torch==2.13.0 && V/bin/pip install torch==2.13.0
hqq==0.2.8.post1 transformers (hqq itself needs neither CUDA nor its optional hqq_aten extension).
CALIB is accepted and ignored: HQQ uses no data. Settings: every nn.Linear but lm_head wrapped in
HQQLinear(BaseQuantizeConfig(nbits=BITS, group_size=GROUP, axis=1)) on device "cpu": axis=1 (groups
of GROUP consecutive input columns, HQQ's default and the one its docs recommend for quality),
its proximal zero-point optimisation (20 iterations max, early stop; run in float32 on CPU
whatever COMPUTE_DTYPE is), zero rounded to an integer at 4 bits only (HQQ's default). COMPUTE_DTYPE
(float32 by default, or float16/bfloat16) is the dtype HQQ stores scale and zero in and
dequantizes with. HQQ only needs the weight's element count to divide by GROUP (a group may then
span two rows): on SmolLM2-135M's 576-wide rows groups 32/64 stay within a row, 128 is accepted but
straddles rows. GROUP must be a multiple of 8.

OUT is "dequantized": each weight replaced by HQQLinear.dequantize() (HQQ's own (W_q - zero) *
scale, in COMPUTE_DTYPE, cast to float32), saved as a plain float32 HF model plus the tokenizer;
HQQ's own packed format was not used. OUT/peer.json: tool, version, settings, bits_per_weight (the
real storage of HQQ's packed W_q -- 4-bit packs 2 per byte, 3-bit packs 10 per int32, i.e. 3.2 bits
-- plus its scale and zero tensors, over all quantized weights), seconds. Prints one JSON line:
wall seconds of quantizing all Linears and the process's peak RSS."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import json
import sys
import time
from importlib.metadata import version

import torch
from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, calib, out, bits, group = sys.argv[1:6]
bits, group = int(bits), int(group)
dtype = getattr(torch, sys.argv[6] if len(sys.argv) > 6 else "float32")
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(model_dir)
cfg = BaseQuantizeConfig(nbits=bits, group_size=group, axis=1)
linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
qlayers = []
t0 = time.perf_counter()
for name, lin in linears:
    # del_orig=False: the float Linear stays in the model to receive the dequantized weight
    qlayers.append(HQQLinear(lin, cfg, del_orig=False, compute_dtype=dtype, device="cpu"))
seconds = time.perf_counter() - t0

stored, n_w = 0, 0
for (name, lin), q in zip(linears, qlayers):
    with torch.no_grad():
        lin.weight.copy_(q.dequantize().float().reshape(lin.weight.shape))
    stored += q.W_q.numel() * q.W_q.element_size() * 8
    stored += sum(q.meta[k].numel() * q.meta[k].element_size() * 8 for k in ("scale", "zero"))
    n_w += lin.weight.numel()
model.save_pretrained(out)
tok.save_pretrained(out)
with open(os.path.join(out, "peer.json"), "w") as f:
    json.dump({"tool": "hqq", "version": version("hqq"),
               "settings": {"method": "HQQ", "bits": bits, "group_size": group, "axis": 1,
                            "compute_dtype": str(dtype).removeprefix("torch."),
                            "round_zero": cfg["weight_quant_params"]["round_zero"],
                            "ignore": ["lm_head"], "calibration": None, "quantized_linears": len(linears)},
               "bits_per_weight": stored / n_w,
               "bits_formula": "packed W_q bits (4 at 4-bit, 3.2 at 3-bit) + 2 * bits(compute_dtype) / group",
               "seconds": seconds}, f, indent=1)
print(json.dumps({"seconds": seconds, "peak_rss_bytes": int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024}))
