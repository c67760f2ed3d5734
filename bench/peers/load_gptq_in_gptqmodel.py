"""Do GPTQ v1 and AWQ GEMM checkpoints written by lowbit load in other tools, and give the
logits of lowbit's own dequantized model?

    GPTQMODEL_CPU_WORKERS=2 /work/peers/venv-gptqmodel/bin/python \
        bench/peers/load_gptq_in_gptqmodel.py --out /tmp/gaw [--lowbit-python python3]
    # transformers 4.57 + optimum + auto-gptq, on the same files:
    /work/peers/venv-optimum/bin/python bench/peers/load_gptq_in_gptqmodel.py --out /tmp/gaw --reuse

Two processes, one file:
1. `--make-reference` (started by 2 with the system python, where lowbit is installed): RTN
   quantization of the default model written as OUT/smollm2-{spec}-{gptq,awq} by
   lowbit.quantize(model, spec, out, format=...); OUT/reference.safetensors holds the prompt
   ids, the logits of lowbit's in-memory model (fp32 scales) and of lowbit's reload of each
   directory (fp16 scales, as stored) in float32 and in each peer dtype, and the dequantized
   weights of three layers.
2. in the peer's environment: load each directory with every loader there is (GPTQModel's
   automatic kernel, GPTQModel's plain torch kernel, transformers), compare the weights the
   kernels apply (their output for the identity matrix) and the logits; print one JSON report.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# (format, lowbit preset): the default job (w4g64) first, then layouts that exercise more
# of the files: asymmetric zero points (AWQ's qzeros order; GPTQ v1's -1, which GPTQModel
# only accepts from itself, and v2), the 3-bit interleave, 8 and 2 bits
CHECKPOINTS = [("gptq", "w4g64"), ("awq", "w4g64"), ("gptq", "w4g64-asym"), ("gptq-v2", "w4g64-asym"),
               ("awq", "w4g64-asym"), ("gptq", "w3g64"), ("gptq-v2", "w3g64-asym"), ("gptq", "w8"),
               ("gptq", "w2g64")]
PEER_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
LAYERS = (0, 15, 29)  # whose dequantized weights are compared
PROMPTS = [
    "The capital of France is",
    "Quantization reduces the memory footprint of large language models by",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Photosynthesis is the process by which green plants and some other organisms use sunlight "
    "to synthesize foods from carbon dioxide and water. In plants, photosynthesis generally",
]


def ckpt_dir(out: Path, fmt: str, spec: str) -> Path:
    return out / f"smollm2-{spec}-{fmt}"


# ---- 1. lowbit side (system python) ---------------------------------------------------------

@torch.no_grad()
def make_reference(out: Path) -> None:
    import copy

    import lowbit
    from lowbit.io.load import load_model
    ref: dict[str, torch.Tensor] = {}
    for fmt, spec in CHECKPOINTS:
        t0 = time.perf_counter()
        # pass the model in memory so that the quantized model stays there too
        summary = lowbit.quantize(load_model(None), spec, ckpt_dir(out, fmt, spec), format=fmt, overwrite=True)
        print(f"[lowbit] wrote {spec} as {fmt} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        mem = summary["loaded"]
        if "ids/0" not in ref:
            for i, p in enumerate(PROMPTS):
                ref[f"ids/{i}"] = mem.tokenizer(p, return_tensors="pt").input_ids
        reloaded = load_model(str(ckpt_dir(out, fmt, spec)))
        fmt = f"{fmt}-{spec}"  # the key of this checkpoint below
        models = {"memory": mem.model, "file": reloaded.model}
        for name, dtype in PEER_DTYPES.items():
            models[f"file_{name}"] = copy.deepcopy(reloaded.model).to(dtype)
        for kind, model in models.items():
            for i in range(len(PROMPTS)):
                ref[f"logits/{fmt}/{kind}/{i}"] = model(ref[f"ids/{i}"]).logits[0].float()
        for name, qt in reloaded.quantized.items():
            if any(f".layers.{l}." in name for l in LAYERS):
                ref[f"weight/{fmt}/{name}"] = qt.dequantize()
                ref[f"scale/{fmt}/{name}"] = qt.scale
        del models, reloaded, mem, summary
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference.safetensors"))


# ---- 2. peer side (GPTQModel venv) ----------------------------------------------------------

def compare_logits(peer: list[torch.Tensor], ref: list[torch.Tensor]) -> dict:
    p, r = torch.cat(peer).float(), torch.cat(ref).float()
    return {"max_abs_diff": float((p - r).abs().max()), "mean_abs_diff": float((p - r).abs().mean()),
            "top1_agreement": float((p.argmax(-1) == r.argmax(-1)).float().mean()), "positions": p.shape[0]}


@torch.no_grad()
def check_model(model, ref: dict, fmt: str, dtype_name: str) -> dict:
    kernels = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "qweight")})
    report: dict = {"kernels": kernels}
    worst_abs, worst_steps = 0.0, 0.0  # steps: differences in units of the group's scale
    for key in [k for k in ref if k.startswith(f"weight/{fmt}/")]:
        name = key.split("/", 2)[2]
        module = model.get_submodule(name)
        want = ref[key]  # (out, in)
        # the weight the kernel really applies: its output for the identity (no bias here);
        # works for every kernel, whatever its internal repacking
        dtype = module.scales.dtype
        w = module(torch.eye(want.shape[1], dtype=dtype)[None])[0].float().t()
        diff = (w - want).abs()
        worst_abs = max(worst_abs, float(diff.max()))
        scale = ref[f"scale/{fmt}/{name}"]  # (out, ngroups), groups of 64 columns here
        per_weight = scale.repeat_interleave(want.shape[1] // scale.shape[1], dim=1)
        worst_steps = max(worst_steps, float((diff / per_weight).max()))
    report["weights"] = {"modules": sum(k.startswith(f"weight/{fmt}/") for k in ref),
                         "max_abs_diff": worst_abs, "max_diff_in_scale_steps": worst_steps}
    n = sum(k.startswith("ids/") for k in ref)
    t0 = time.perf_counter()
    logits = [model(ref[f"ids/{i}"]).logits[0].float() for i in range(n)]
    report["forward_seconds"] = round(time.perf_counter() - t0, 2)
    for kind in ("memory", "file", f"file_{dtype_name}"):
        report[f"vs_lowbit_{kind}"] = compare_logits(logits, [ref[f"logits/{fmt}/{kind}/{i}"] for i in range(n)])
    # what the dtype alone costs lowbit's own model: the scale of the differences above
    report["lowbit_fp32_vs_lowbit_" + dtype_name] = compare_logits(
        [ref[f"logits/{fmt}/file_{dtype_name}/{i}"] for i in range(n)],
        [ref[f"logits/{fmt}/file/{i}"] for i in range(n)])
    return report


def peer_loaders() -> tuple[dict, dict]:
    """Loaders importable in this environment: GPTQModel (its automatic kernel choice and its
    plain torch kernel) and transformers (which uses GPTQModel, or optimum + auto-gptq)."""
    import transformers
    versions = {"transformers": transformers.__version__, "torch": torch.__version__}
    loaders = {}
    try:
        import gptqmodel
        from gptqmodel import GPTQModel
        versions["gptqmodel"] = gptqmodel.__version__
        loaders["GPTQModel.load"] = lambda d, dt: GPTQModel.load(str(d), device="cpu", dtype=dt).model
        loaders["GPTQModel.load(backend=torch)"] = lambda d, dt: GPTQModel.load(
            str(d), device="cpu", dtype=dt, backend="torch").model
    except ImportError:
        pass
    for pkg in ("optimum", "auto_gptq", "awq"):
        try:
            versions[pkg] = __import__(pkg).__version__
        except Exception:  # not installed (or no __version__)
            pass
    loaders["transformers.from_pretrained"] = lambda d, dt: transformers.AutoModelForCausalLM.from_pretrained(
        str(d), dtype=dt, device_map="cpu")
    return loaders, versions


def run_peer(out: Path, dtype_names: list[str], only_main: bool) -> dict:
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("GPTQMODEL_OFFLINE", "1")
    ref = load_file(str(out / "reference.safetensors"))
    loaders, versions = peer_loaders()
    results = {**versions, "runs": []}
    for n, (fmt, spec) in enumerate(CHECKPOINTS):
        if only_main and n >= 2:
            break
        for loader, load in loaders.items():
            # every dtype for the main job with the automatic kernel, float16 otherwise
            names = dtype_names if (n < 2 and loader == next(iter(loaders))) else ["float16"]
            for dtype_name in names:
                run = {"format": fmt, "spec": spec, "loader": loader, "dtype": dtype_name}
                t0 = time.perf_counter()
                try:
                    model = load(ckpt_dir(out, fmt, spec), PEER_DTYPES[dtype_name]).eval()
                    run["load_seconds"] = round(time.perf_counter() - t0, 1)
                    run.update(check_model(model, ref, f"{fmt}-{spec}", dtype_name))
                    del model
                except Exception as e:  # a loader that refuses the file is a result too
                    run["error"] = f"{type(e).__name__}: {str(e)[:400]}"
                print(json.dumps(run), file=sys.stderr, flush=True)
                results["runs"].append(run)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/gaw", type=Path)
    ap.add_argument("--make-reference", action="store_true", help="lowbit side (system python)")
    ap.add_argument("--lowbit-python", default="python3", help="python with lowbit installed")
    ap.add_argument("--reuse", action="store_true", help="keep an existing OUT/reference.safetensors")
    ap.add_argument("--dtypes", default="bfloat16,float16,float32")
    ap.add_argument("--only-main", action="store_true", help="only the w4g64 checkpoints")
    ap.add_argument("--report", type=Path, help="also write the JSON report here (peers print to stdout too)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.make_reference:
        make_reference(args.out)
        return
    if not (args.reuse and (args.out / "reference.safetensors").is_file()):
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if "venv" not in p)
        subprocess.run([args.lowbit_python, __file__, "--make-reference", "--out", str(args.out)],
                       check=True, env=env)
    report = json.dumps(run_peer(args.out, args.dtypes.split(","), args.only_main), indent=2)
    if args.report:
        args.report.write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
