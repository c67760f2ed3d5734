"""Layer-wise ablation of GPTQ on GGML block grids, on real layers of the default model.

For a few Linears, H = 2 X^T X / n from the float model's inputs on calibration windows;
for each GGML type the output error tr(dW H dW^T) of: llama.cpp's rounding (as llama-quantize),
llama.cpp's importance-weighted rounding (imatrix = diag(H)/2), and GPTQ on the block grids
with each column order and two dampenings. Printed relative to llama.cpp's rounding.

    python bench/gguf_gptq_ablation.py [--nsamples 32] [--layers 3,15,27]
"""
from __future__ import annotations

import argparse
import time

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as T


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--layers", default="3,15,27")
    args = ap.parse_args(argv)

    from lowbit.calibration.text import calibration_samples, default_text
    from lowbit.formats import ggml_blocks
    from lowbit.io.load import load_model
    from lowbit.methods.gptq import gptq_ggml

    loaded = load_model(None)
    model = loaded.model
    layers = [int(x) for x in args.layers.split(",")]
    wanted = {f"model.layers.{i}.{p}": None for i in layers
              for p in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")}
    H, n, hooks = {}, {}, []
    for name, m in model.named_modules():
        if name in wanted:
            def hook(mod, a, _name=name):
                x = a[0].reshape(-1, a[0].shape[-1]).double()
                H[_name] = H.get(_name, 0) + 2 * x.T @ x
                n[_name] = n.get(_name, 0) + x.shape[0]
            hooks.append(m.register_forward_pre_hook(hook))
    ids = calibration_samples(loaded.tokenizer, default_text("calib"), args.nsamples, args.seqlen, 0)
    with torch.no_grad():
        for b in range(0, len(ids), 4):
            model.model(ids[b:b + 4])
    for h in hooks:
        h.remove()
    rows = []
    for name in wanted:
        Hn = (H[name] / n[name]).float()
        W = model.get_submodule(name).weight.data.float()
        cols = W.shape[1]
        types = [T.Q4_K, T.Q3_K, T.Q2_K, T.Q6_K] if cols % 256 == 0 else [T.Q5_0, T.Q4_0, T.Q8_0]

        def err(Q):
            d = torch.as_tensor(np.asarray(Q)).double() - W.double()
            return float(torch.einsum("ij,jk,ik->", d, Hn.double(), d))

        for t in types:
            base = err(gguf.quants.dequantize(ggml_blocks.quantize(W.numpy(), t), t).reshape(W.shape))
            imp = (torch.diag(Hn) / 2).numpy()
            res = {"imatrix": err(gguf.quants.dequantize(ggml_blocks.quantize(W.numpy(), t, imp), t).reshape(W.shape))}
            for order in ("group", "none", "static"):
                t0 = time.time()
                res[f"gptq-{order}"] = err(gptq_ggml(W, Hn, t, order=order).values)
                res[f"s-{order}"] = time.time() - t0
            res["gptq-group-damp0.1"] = err(gptq_ggml(W, Hn, t, damp_percent=0.1, order="group").values)
            rows.append((name.replace("model.layers.", "L"), t.name, base, res))
            r = {k: (v / base if not k.startswith("s-") else v) for k, v in res.items()}
            print(f"| {rows[-1][0]} | {t.name} | {r['imatrix']:.3f} | {r['gptq-none']:.3f} | {r['gptq-group']:.3f} | "
                  f"{r['gptq-static']:.3f} | {r['gptq-group-damp0.1']:.3f} | {r['s-group']:.1f} |", flush=True)
    keys = ["imatrix", "gptq-none", "gptq-group", "gptq-static", "gptq-group-damp0.1"]
    geo = {k: float(np.exp(np.mean([np.log(res[k] / base) for _, _, base, res in rows]))) for k in keys}
    print("| geometric mean | | " + " | ".join(f"{geo[k]:.3f}" for k in keys) + " | |")


if __name__ == "__main__":
    print("| layer | type | imatrix | GPTQ natural | GPTQ group act-order | GPTQ static act-order | "
          "GPTQ group, damp 0.1 | GPTQ s |\n|---|---|---|---|---|---|---|---|")
    main()
