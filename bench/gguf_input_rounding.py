"""Where llama.cpp's Q8_0 floor comes from: the KLD that its rounding of Linear inputs (Q8_0
blocks of 32 in front of every Q8_0 weight, formats/ggml_activations.py) alone costs the
default model, per kind of Linear, simulated in torch float32 with exact weights; and the same
with the weights rounded to Q8_0 too (llama-quantize's file, as llama.cpp computes it).

    python bench/gguf_input_rounding.py [--windows 8]

Checks the simulation against llama.cpp: bench/gguf_q8_floor.py measures the input-rounding
floor with llama.cpp itself (KLD 0.00310 on 20 windows), bench/gguf_vs_llamacpp.py the file.
"""
from __future__ import annotations

import argparse

import torch
from gguf import GGMLQuantizationType as T

from lowbit.calibration.text import default_text, tokenize
from lowbit.eval.perplexity import windows
from lowbit.formats.ggml_activations import round_q8_0
from lowbit.io.load import load_model
from lowbit.formats.ggml_tensor import round_ggml

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


@torch.no_grad()
def kld(model, wins, ref) -> float:
    total, n = 0.0, 0
    for w, r in zip(wins, ref):
        lp = torch.log_softmax(model(w[None]).logits[0].double(), -1)
        total += float((r.exp() * (r - lp)).sum())
        n += r.shape[0]
    return total / n


def round_inputs(model, kinds) -> list:
    return [m.register_forward_pre_hook(lambda mod, a: (round_q8_0(a[0]),))
            for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(tuple(kinds))]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=8)
    args = ap.parse_args(argv)
    loaded = load_model(None)
    model = loaded.model.float().eval()
    wins = [torch.tensor(w) for w in windows(tokenize(loaded.tokenizer, default_text("eval")), 512, args.windows).tolist()]
    with torch.no_grad():
        ref = [torch.log_softmax(model(w[None]).logits[0].double(), -1) for w in wins]
    print(f"{len(wins)} x 512 tokens; KLD against the float model (torch float32)\n")
    print("| inputs rounded to Q8_0 blocks | KLD |\n|---|---|")
    for kinds in [[k] for k in KINDS] + [list(KINDS)]:
        hooks = round_inputs(model, kinds)
        print(f"| {' + '.join(kinds) if len(kinds) == 1 else 'all'} | {kld(model, wins, ref):.5f} |")
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for n, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and n.startswith("model.layers."):
                m.weight.copy_(round_ggml(m.weight, T.Q8_0).values)
        e = model.get_input_embeddings().weight
        e.copy_(round_ggml(e, T.Q8_0).values)
    print(f"| weights on llama.cpp's Q8_0 rounding, exact inputs | {kld(model, wins, ref):.5f} |")
    hooks = round_inputs(model, KINDS)
    print(f"| both (llama-quantize's Q8_0 file as llama.cpp runs it) | {kld(model, wins, ref):.5f} |")
    for h in hooks:
        h.remove()


if __name__ == "__main__":
    main()
