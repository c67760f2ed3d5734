"""torchao's int8 on the default model: W8A8 (Int8DynamicActivationInt8WeightConfig: int8
weights per channel, dynamic per-token int8 activations) or weight-only int8
(Int8WeightOnlyConfig), evaluated by lowbit's eval on the same windows as lowbit's rows. Runs in
torchao's own virtual environment, which has lowbit installed (editable) beside torchao 0.18:

    PEER_PYTHON bench/peers/torchao_int8.py w8a8|weight-only

Prints one JSON line: the evaluation, and the seconds quantize_() took."""
import json
import sys
import time

import torch
from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

import lowbit
from lowbit.io.load import load_model
from lowbit.io.loaded import Loaded

CONFIGS = {"w8a8": Int8DynamicActivationInt8WeightConfig, "weight-only": Int8WeightOnlyConfig}
config = CONFIGS[sys.argv[1]]()
base = load_model(None)
peer = load_model(None)
t0 = time.perf_counter()
with torch.no_grad():
    quantize_(peer.model, config,
              filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and "lm_head" not in name)
seconds = time.perf_counter() - t0
ev = lowbit.evaluate(Loaded(peer.model.eval(), base.tokenizer, f"torchao int8 {sys.argv[1]}", "hf"), base=base)
print(json.dumps({"eval": ev, "quantize_seconds": seconds}, default=str))
