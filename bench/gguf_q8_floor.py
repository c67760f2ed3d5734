"""Floor of llama.cpp's Q8_0 KLD on the default model: every decoder Linear set to its Q8_0
rounding, written as F32, quantized to Q8_0 by llama.cpp (lossless: the weights are already on
the grid), and judged by llama.cpp against that F32 file. What remains is llama.cpp's own 8-bit
rounding of activations, which any Q8_0 file of this model pays (docs/design/gguf_gptq.md).

    python bench/gguf_q8_floor.py [--peer-python /work/peers/venv-llamacpp/bin/python] [--work DIR]
"""
import json, math, subprocess, sys
from pathlib import Path
import torch
from gguf import GGMLQuantizationType as T
from lowbit.calibration.text import default_text, tokenize
from lowbit.eval.perplexity import windows
from lowbit.io.default_model import default_gguf
from lowbit.io.gguf_writer import write_gguf
from lowbit.io.load import load_model
from lowbit.formats.ggml_tensor import round_ggml

import argparse
import tempfile
ap = argparse.ArgumentParser()
ap.add_argument("--peer-python", default="/work/peers/venv-llamacpp/bin/python")
ap.add_argument("--work", default=None)
args = ap.parse_args()
PY, RUN = args.peer_python, str(Path(__file__).resolve().parent / "llamacpp_run.py")
work = Path(args.work or tempfile.mkdtemp(prefix="q8floor-")); work.mkdir(parents=True, exist_ok=True)
def peer(req):
    r = subprocess.run([PY, RUN], input=json.dumps(req), capture_output=True, text=True)
    if r.returncode: sys.exit(r.stderr[-2000:])
    return json.loads(r.stdout)
loaded = load_model(None)
with torch.no_grad():
    for name, m in loaded.model.named_modules():
        if isinstance(m, torch.nn.Linear) and name.startswith("model.layers."):
            m.weight.copy_(round_ggml(m.weight, T.Q8_0).values)
ref = write_gguf(work / "q8exact-F32.gguf", loaded.model, loaded.tokenizer, "F32", overwrite=True, source_gguf=default_gguf())
peer({"op": "quantize", "src": str(ref), "dst": str(work / "q8exact-Q8_0.gguf"), "ftype": "Q8_0"})
wins = windows(tokenize(loaded.tokenizer, default_text("eval")), 512, 20).tolist()
res = peer({"op": "eval", "ref": str(ref), "windows": wins, "models": {"q8exact-Q8_0": str(work / "q8exact-Q8_0.gguf")}})
for k, v in res.items():
    print(k, f"ppl {math.exp(v['nll'] / v['tokens']):.3f} KLD {v['kld'] / v['tokens']:.5f} top1 {v['top1'] / v['tokens']:.4f}")
