"""GGUF files from lowbit against llama.cpp's own quantizer, both judged by llama.cpp.

From the default model, lowbit writes an F32 GGUF (the float reference). llama.cpp
(llama_model_quantize, in the peer venv) quantizes that file to each type; lowbit's
producer writes the same types from the same float weights. llama.cpp evaluates every
file on the same windows of the evaluation split (logits for all positions): perplexity,
KL(P_float || P_file) per token, top-1 agreement with the float file.

    python bench/gguf_vs_llamacpp.py [--types Q8_0,Q4_K_M,Q3_K_M,Q2_K] [--windows 20]
        [--producer lowbit-rtn] [--peer-python /work/peers/venv-llamacpp/bin/python]

Producers are pluggable: register_producer("name", fn) with
fn(loaded, file_type, out_path, source_gguf) -> Path (loaded: lowbit.io.load.Loaded), called
in a file given as --plugin FILE (run with register_producer and lowbit_rtn in its globals).
E.g. a GPTQ producer quantizes loaded.model on the grids that
gguf_mixes.plan_types(loaded.model, file_type) names and calls write_gguf(..., blocks=...).
Several producers: --producer lowbit-rtn,gptq --plugin gptq_producer.py.

Built in: lowbit-rtn (llama.cpp's rounding: the same bytes as llama-quantize), lowbit-gptq
(smoothing then GPTQ on the block grids; lowbit quantize --format gguf --method gptq), its
ablations lowbit-gptq-nosmooth (no smoothing), lowbit-gptq-natural (natural column order) and lowbit-gptq-static
(global act-order on grids fitted up front), lowbit-imatrix (llama.cpp's importance-weighted
rounding with importance from lowbit's walk, no error compensation) and imatrix-float
(llama.cpp's importance-weighted rounding with llama-imatrix's statistic from the float model).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "llamacpp_run.py"
PRODUCERS: dict[str, Callable] = {}


def register_producer(name: str, fn: Callable) -> None:
    PRODUCERS[name] = fn


def lowbit_rtn(loaded, file_type: str, out_path: Path, source_gguf: Path | None) -> Path:
    """lowbit's writer with its own block quantizers (no calibration)."""
    from lowbit.io.gguf_writer import write_gguf
    return write_gguf(out_path, loaded.model, loaded.tokenizer, file_type, overwrite=True, source_gguf=source_gguf)


register_producer("lowbit-rtn", lowbit_rtn)
CALIB = {"nsamples": 128, "seqlen": 512, "seed": 0}  # set from --nsamples; the README's GPTQ protocol


def lowbit_walk(method: str, **method_args) -> Callable:
    """A producer running lowbit's layer walk onto the file type's block grids
    (lowbit.quantize(..., format="gguf")) on a copy of the model, with calibration CALIB."""
    def produce(loaded, file_type: str, out_path: Path, source_gguf: Path | None) -> Path:
        import copy

        from lowbit import api
        from lowbit.io.load import Loaded
        from lowbit.spec import QuantSpec

        copied = Loaded(copy.deepcopy(loaded.model), loaded.tokenizer, loaded.source, loaded.kind)
        spec = QuantSpec(method=method, method_args=dict(method_args))
        api.quantize(copied, spec, out_path, format="gguf", gguf_type=file_type, overwrite=True, **CALIB)
        return out_path
    return produce


def float_imatrix(loaded, file_type: str, out_path: Path, source_gguf: Path | None) -> Path:
    """llama.cpp with an importance matrix: llama-imatrix's statistic (mean squared input per
    column of every Linear, float model, same calibration windows) fed to llama.cpp's
    importance-weighted quantizers (ours, byte-identical to its C code; llama-cpp-python cannot
    pass an imatrix to llama_model_quantize, whose params hold a C++ map)."""
    import torch

    from lowbit.calibration.text import calibration_samples, default_text
    from lowbit.io.gguf_writer import write_gguf

    if "imatrix" not in _IMATRIX:
        model = loaded.model
        ids = calibration_samples(loaded.tokenizer, default_text("calib"), CALIB["nsamples"], CALIB["seqlen"],
                                  CALIB["seed"])
        sums, counts, hooks = {}, {}, []
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and name.startswith("model.layers."):
                def hook(mod, args, _name=name):
                    x = args[0].reshape(-1, args[0].shape[-1]).double()
                    sums[_name] = sums.get(_name, 0) + (x * x).sum(0)
                    counts[_name] = counts.get(_name, 0) + x.shape[0]
                hooks.append(m.register_forward_pre_hook(hook))
        try:
            with torch.no_grad():
                for b in range(0, len(ids), 8):
                    model.model(ids[b:b + 8])  # the decoder only: no logits needed
        finally:
            for h in hooks:
                h.remove()
        _IMATRIX["imatrix"] = {f"{n}.weight": (sums[n] / counts[n]).float().numpy() for n in sums}
    return write_gguf(out_path, loaded.model, loaded.tokenizer, file_type, importance=_IMATRIX["imatrix"],
                      overwrite=True, source_gguf=source_gguf)


_IMATRIX: dict = {}
register_producer("lowbit-gptq", lowbit_walk("gptq"))
register_producer("lowbit-gptq-natural", lowbit_walk("gptq", ggml_order="none"))
register_producer("lowbit-gptq-static", lowbit_walk("gptq", ggml_order="static"))
register_producer("lowbit-gptq-auto", lowbit_walk("gptq", ggml_order="auto"))
register_producer("lowbit-gptq-group", lowbit_walk("gptq", ggml_order="group"))
register_producer("lowbit-gptq-nohead", lowbit_walk("gptq", head_gptq=False))
register_producer("lowbit-gptq-nosmooth", lowbit_walk("gptq", smooth="off"))
register_producer("lowbit-imatrix", lowbit_walk("gptq", gguf_solver="imatrix"))
register_producer("imatrix-float", float_imatrix)


def identical_tensors(a: Path, b: Path) -> tuple[int, int]:
    """(tensors with the same type and bytes, tensors in a)."""
    import gguf
    import numpy as np

    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    same = sum(1 for k, t in ta.items() if k in tb and t.tensor_type == tb[k].tensor_type
               and np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(tb[k].data).view(np.uint8)))
    return same, len(ta)


def peer(python: str, req: dict) -> dict:
    r = subprocess.run([python, str(RUNNER)], input=json.dumps(req), capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"llama.cpp runner failed ({req['op']}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q8_0,Q4_K_M,Q3_K_M,Q2_K")
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--producer", default="lowbit-rtn", help="comma-separated registered producers")
    ap.add_argument("--plugin", action="append", default=[], help="python file that calls register_producer")
    ap.add_argument("--peer-python", default="/work/peers/venv-llamacpp/bin/python")
    ap.add_argument("--work", default=None, help="directory for the GGUF files (default: a temporary one)")
    ap.add_argument("--nsamples", type=int, default=128, help="calibration windows for the walk producers")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    CALIB["nsamples"] = args.nsamples

    from lowbit.calibration.text import default_text, tokenize
    from lowbit.eval.perplexity import windows
    from lowbit.io.default_model import default_gguf
    from lowbit.io.load import load_model

    import runpy
    for plugin in args.plugin:
        runpy.run_path(plugin, init_globals={"register_producer": register_producer, "lowbit_rtn": lowbit_rtn})
    producers = [p.strip() for p in args.producer.split(",") if p.strip()]
    unknown = [p for p in producers if p not in PRODUCERS]
    if unknown:
        sys.exit(f"unknown producer {unknown[0]!r}: registered are {', '.join(PRODUCERS)}")
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    work = Path(args.work or tempfile.mkdtemp(prefix="gguf-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    loaded = load_model(None)
    source = default_gguf()
    wins = windows(tokenize(loaded.tokenizer, default_text("eval")), args.seqlen, args.windows).tolist()

    ref = lowbit_rtn(loaded, "F32", work / "float-F32.gguf", source)
    files, seconds = {}, {}
    for t in types:
        out = work / f"llamacpp-{t}.gguf"
        seconds[f"llama.cpp {t}"] = peer(args.peer_python, {"op": "quantize", "src": str(ref), "dst": str(out),
                                                            "ftype": t})["seconds"]
        files[f"llama.cpp {t}"] = out
        for p in producers:
            t0 = time.time()
            files[f"{p} {t}"] = PRODUCERS[p](loaded, t, work / f"{p}-{t}.gguf", source)
            seconds[f"{p} {t}"] = time.time() - t0
    t0 = time.time()
    res = peer(args.peer_python, {"op": "eval", "ref": str(ref), "windows": wins,
                                  "models": {k: str(v) for k, v in files.items()}})
    eval_s = time.time() - t0

    rows = {}
    for name, r in res.items():
        path = ref if name == "ref" else files[name]
        rows[name] = {"size_bytes": path.stat().st_size, "perplexity": math.exp(r["nll"] / r["tokens"]),
                      "kld": r["kld"] / r["tokens"], "top1": r["top1"] / r["tokens"], "tokens": r["tokens"],
                      "quantize_s": seconds.get(name), "eval_s": r["seconds"]}
    if args.json:
        print(json.dumps(rows, indent=2))
    ref_row = rows["ref"]
    print(f"float reference (F32 GGUF by lowbit): {ref_row['size_bytes'] / 1e6:.1f} MB, perplexity "
          f"{ref_row['perplexity']:.3f} on {ref_row['tokens']} tokens ({len(wins)} x {args.seqlen}); "
          f"evaluation by llama.cpp took {eval_s:.0f} s")
    for p in producers:
        print_table(rows, files, types, p)


def print_table(rows: dict, files: dict, types: list[str], p: str) -> None:
    print(f"\n| type | llama.cpp MB | {p} MB | llama.cpp ppl | {p} ppl | llama.cpp KLD | {p} KLD | "
          f"llama.cpp top-1 | {p} top-1 | size ratio | ppl ratio | KLD ratio | quantize s (llama.cpp / {p}) | "
          "identical tensors |")
    print("|---" * 14 + "|")
    for t in types:
        a, b = rows[f"llama.cpp {t}"], rows[f"{p} {t}"]
        print(f"| {t} | {a['size_bytes'] / 1e6:.1f} | {b['size_bytes'] / 1e6:.1f} | {a['perplexity']:.3f} | "
              f"{b['perplexity']:.3f} | {a['kld']:.4f} | {b['kld']:.4f} | {a['top1']:.3f} | {b['top1']:.3f} | "
              f"{b['size_bytes'] / a['size_bytes']:.3f} | {b['perplexity'] / a['perplexity']:.3f} | "
              f"{b['kld'] / max(a['kld'], 1e-12):.3f} | {a['quantize_s']:.1f} / {b['quantize_s']:.1f} | "
              "%d / %d |" % identical_tensors(files[f"llama.cpp {t}"], files[f"{p} {t}"]))


if __name__ == "__main__":
    main()
