"""Run GPTQModel's GPTQ (in its own virtual environment) on given calibration ids, on CPU.

    PEER_PYTHON peers/gptqmodel_gptq.py MODEL_DIR CALIB.safetensors OUT BITS GROUP SYM

GPTQModel 7.6.0 (7.7 needs torch >= 2.14.1): python -m venv V && V/bin/pip install
torch==2.13.0 gptqmodel==7.6.0 (pure Python; no CUDA extension is built). Settings: GPTQ,
damp_percent 0.01 (GPTQModel's default is 0.05), GPTQModel's defaults otherwise: desc_act off
with act_group_aware on (its "GAR" act-order: columns solved in Hessian order, groups kept
static), true_sequential, batch size 1, lm_head left in float, offload_to_disk on; the model
loaded and run in float32 (its stored dtype). GROUP <= 0 is per channel (group_size -1), where
GAR is refused, so desc_act on instead (one group: the same column order). The ids are
passed in file order (calibration_sort=None, no length filter). Saved with GPTQModel's save()
as GPTQ (v1 checkpoint format). Prints one JSON line: wall seconds of quantize() and the
process's peak RSS."""
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("GPTQMODEL_OFFLINE", "1")
# its default on a 2-core machine (1 CPU worker) is below its own model-loader pool (2): ValueError
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import torch  # noqa: E402
from gptqmodel import GPTQModel, QuantizeConfig  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

model_dir, calib, out = (os.path.abspath(a) for a in sys.argv[1:4])
bits, group, sym = sys.argv[4:7]
work = tempfile.TemporaryDirectory()  # GPTQModel writes logs/*.log under the working directory
os.chdir(work.name)
ids = load_file(calib)["input_ids"]
g = int(group) if int(group) > 0 else -1
# act_group_aware refuses group_size -1; per channel, classic desc_act is the same ordering
qcfg = QuantizeConfig(bits=int(bits), group_size=g, sym=sym == "1", damp_percent=0.01, device="cpu",
                      desc_act=g < 0, act_group_aware=g > 0)
model = GPTQModel.load(model_dir, qcfg, dtype=torch.float32)
rows = [{"input_ids": r.tolist(), "attention_mask": [1] * len(r)} for r in ids]
t0 = time.perf_counter()
model.quantize(rows, calibration_sort=None, calibration_data_min_length=0, batch_size=1)
seconds = time.perf_counter() - t0
model.save(out)
print(json.dumps({"seconds": seconds, "peak_rss_bytes": int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024}))
