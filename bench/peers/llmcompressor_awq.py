"""Run llm-compressor's AWQ (in its own virtual environment) on given calibration ids, on CPU.

    PEER_PYTHON peers/llmcompressor_awq.py MODEL_DIR CALIB.safetensors OUT BITS GROUP SYM

Venv: python3 -m venv V && V/bin/pip install torch==2.13.0 && V/bin/pip install torch==2.13.0
llmcompressor==0.14.0.1 (it brings compressed-tensors 0.19.0, transformers 5.17.0; no CUDA).
Settings: AWQModifier with its defaults (mappings inferred for Llama, duo_scaling on, n_grid 20)
followed by a QuantizationModifier (round to nearest with its min-max observer, on the smoothed
weights) of every Linear but lm_head; the model loaded and run in float32. GROUP <= 0 is per
channel. Groups run along the input columns and llm-compressor refuses (ValueError before
calibration) any Linear whose columns are not a multiple of GROUP: on SmolLM2-135M (in-features
576 for q/k/v/o/gate/up, 1536 for down) group 128 is refused, 64 and 32 are accepted. The ids
are passed in file order (no shuffle), one row per sample, like llmcompressor_gptq.py.

OUT is "dequantized": each quantized Linear's weight replaced by its fake-quantized value
(compressed-tensors' fake_quantize with the scales/zeros AWQ left), with the AWQ-smoothed norms,
saved as a plain float32 HF model plus the tokenizer; llm-compressor's own packed format was not
used. OUT/peer.json holds tool, version, settings, bits_per_weight, seconds. Prints one JSON
line: wall seconds of oneshot() and the process's peak RSS."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import json
import sys
import time
from importlib.metadata import version

import torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from compressed_tensors.quantization.lifecycle.forward import fake_quantize
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
from llmcompressor.modifiers.transform.awq import AWQModifier
from llmcompressor.pipelines.cache import IntermediatesCache
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

# AWQ pins its cached activations for faster host-to-GPU copies; pin_memory() raises without an
# accelerator, and on CPU pinning buys nothing, so it is skipped
if not torch.cuda.is_available():
    IntermediatesCache.pin_memory = lambda self, *a, **k: None

model_dir, calib, out, bits, group, sym = sys.argv[1:7]
bits, group, sym = int(bits), int(group), sym == "1"
ids = load_file(calib)["input_ids"]
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(model_dir)
ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
wargs = {"num_bits": bits, "type": "int", "symmetric": sym, "strategy": "channel" if group <= 0 else "group"}
if group > 0:
    wargs["group_size"] = group
# the old AWQModifier(scheme=...) is a deprecated shim for exactly this pair of modifiers
recipe = [AWQModifier(),
          QuantizationModifier(config_groups={"group_0": QuantizationScheme(targets=["Linear"],
                                                                            weights=QuantizationArgs(**wargs))},
                               ignore=["lm_head"])]
t0 = time.perf_counter()
model = oneshot(model=model, recipe=recipe, tokenizer=tok, dataset=ds, num_calibration_samples=ids.shape[0],
                max_seq_length=ids.shape[1], shuffle_calibration_samples=False)
seconds = time.perf_counter() - t0

# A fresh float model receives the smoothed, fake-quantized tensors: saving `model` itself would
# carry a quantization_config that makes transformers rebuild compressed-tensors modules.
deq, scale_bits, n_w, n_s = {}, None, 0, 0
for name, mod in model.named_modules():
    scheme = getattr(mod, "quantization_scheme", None)
    if scheme is None or scheme.weights is None or not hasattr(mod, "weight_scale"):
        continue
    deq[name + ".weight"] = fake_quantize(mod.weight.data, mod.weight_scale.data,
                                          getattr(mod, "weight_zero_point", None), scheme.weights).float()
    scale_bits = mod.weight_scale.element_size() * 8  # pack-quantized keeps scales in this dtype
    n_w, n_s = n_w + mod.weight.numel(), n_s + mod.weight_scale.numel()
state = {k: v for k, v in model.state_dict().items()}
state.update(deq)
clean = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
missing = [k for k in clean.state_dict() if k not in state]
if missing or not deq:
    sys.exit(f"dequantized state incomplete: missing {missing[:5]}, {len(deq)} quantized Linears")
clean.load_state_dict({k: state[k] for k in clean.state_dict()})
clean.save_pretrained(out)
tok.save_pretrained(out)
# pack-quantized: BITS per weight, one scale per group (per row if per channel), one BITS-bit zero
# per group when asym; = bits + (scale_bits + zero_bits) / group when GROUP divides the columns
bpw = bits + n_s * (scale_bits + (0 if sym else bits)) / n_w
with open(os.path.join(out, "peer.json"), "w") as f:
    json.dump({"tool": "llmcompressor", "version": version("llmcompressor"),
               "settings": {"method": "AWQ", "bits": bits, "group_size": group, "sym": sym,
                            "scale_bits": scale_bits, "duo_scaling": True, "n_grid": 20,
                            "ignore": ["lm_head"], "nsamples": ids.shape[0], "seqlen": ids.shape[1],
                            "quantized_linears": len(deq)},
               "bits_per_weight": bpw, "bits_formula": "bits + (scale_bits + (0 if sym else bits)) / group",
               "seconds": seconds}, f, indent=1)
print(json.dumps({"seconds": seconds, "peak_rss_bytes": int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024}))
