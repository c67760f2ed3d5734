"""Run llm-compressor's GPTQ (in its own virtual environment) on given calibration ids.

    PEER_PYTHON peers/llmcompressor_gptq.py MODEL_DIR CALIB.safetensors OUT BITS GROUP SYM

Prints one JSON line: wall seconds of oneshot() and the process's peak RSS."""
import json
import sys
import time

import torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.gptq import GPTQModifier
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, calib, out, bits, group, sym = sys.argv[1:7]
ids = load_file(calib)["input_ids"]
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(model_dir)
ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
wargs = {"num_bits": int(bits), "type": "int", "symmetric": sym == "1",
         "strategy": "channel" if int(group) <= 0 else "group"}
if int(group) > 0:
    wargs["group_size"] = int(group)
recipe = GPTQModifier(config_groups={"group_0": QuantizationScheme(targets=["Linear"],
                                                                  weights=QuantizationArgs(**wargs))},
                      ignore=["lm_head"])
t0 = time.perf_counter()
model = oneshot(model=model, recipe=recipe, tokenizer=tok, dataset=ds, num_calibration_samples=ids.shape[0],
                max_seq_length=ids.shape[1], shuffle_calibration_samples=False)
seconds = time.perf_counter() - t0
model.save_pretrained(out, save_compressed=True)
tok.save_pretrained(out)
print(json.dumps({"seconds": seconds, "peak_rss_bytes": int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024}))
