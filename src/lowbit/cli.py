"""Command line: lowbit quantize / eval / info (names and JSON keys: shared/CONTRACT.md)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lowbit.errors import LowbitError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Quantize LLMs layer by layer and measure what it cost.")
err = Console(stderr=True)
out = Console()


class _Bars:
    """Maps progress(stage, done, total) callbacks onto rich progress bars (on stderr)."""

    def __init__(self, enabled: bool):
        self.progress = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err, disable=not enabled, transient=False)
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int):
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)


def _default_out(model: Optional[str], spec) -> Path:
    base = Path(model).stem if model else "SmolLM2-135M-Instruct"
    g = f"g{spec.group_size}" if spec.group_size > 0 else ""
    sym = "" if spec.symmetric else "-asym"
    return Path(f"{base}-{spec.method}-w{spec.bits}{g}{sym}")


def _mb(n) -> str:
    return "-" if n is None else f"{n / 1e6:,.1f} MB"


def _fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def _print_eval_table(res: dict, title: str, quantize_seconds: float | None = None):
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    rows = [
        ("size on disk", _mb(res.get("size_bytes"))),
        ("base size on disk", _mb(res.get("base_size_bytes"))),
        ("size ratio", _fmt(res["size_bytes"] / res["base_size_bytes"], ".3f")
         if res.get("size_bytes") and res.get("base_size_bytes") else "-"),
        ("bits per weight (quantized linears)", _fmt(res.get("bits_per_weight"), ".3f")),
        ("perplexity (base)", _fmt(res.get("base_perplexity"))),
        ("perplexity (quantized)", _fmt(res.get("perplexity"))),
        ("KL divergence (nats/token)", _fmt(res.get("kld"), ".5f")),
        ("top-1 agreement", _fmt(res.get("top1_agreement"), ".4f")),
        ("eval tokens", f"{res['tokens']:,} ({res['windows']} x {res['seqlen']})"),
    ]
    if quantize_seconds is not None:
        rows.append(("quantize time", f"{quantize_seconds:.1f} s"))
    rows.append(("eval time", f"{res['eval_seconds']:.1f} s"))
    for r in rows:
        t.add_row(*r)
    out.print(t)


def _print_layout_changes(changes: dict):
    kinds: dict[str, int] = {}
    for c in changes.values():
        if "used" in c:
            key = f"group size {c['requested']} -> {c['used']}"
            kinds[key] = kinds.get(key, 0) + 1
        for k, v in c.items():
            if isinstance(v, dict):
                key = f"{k} {v['requested']} -> {v['used']}"
                kinds[key] = kinds.get(key, 0) + 1
    err.print(f"[yellow]note:[/] {len(changes)} layers changed layout so compressed-tensors can store them: "
              + ", ".join(f"{k} ({n} layers)" for k, n in kinds.items()) + "; recorded in lowbit.json")


@app.command()
def quantize(
    model: Optional[str] = typer.Argument(None, help="HF directory, .gguf file, hub id; default SmolLM2-135M"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="output directory"),
    method: str = typer.Option("rtn", help="quantization method (rtn, gptq)"),
    bits: int = typer.Option(4, help="bits per weight, 2..8"),
    group_size: int = typer.Option(128, help="group size; -1 per channel, 0 per tensor"),
    sym: bool = typer.Option(True, "--sym/--asym", help="symmetric grid or asymmetric with zero point"),
    clip: str = typer.Option("auto", help="grid range: minmax, mse (clipping search), auto (rtn: minmax, gptq: mse)"),
    damp_percent: float = typer.Option(0.01, help="gptq: dampening, fraction of the mean Hessian diagonal"),
    act_order: bool = typer.Option(True, "--act-order/--no-act-order", help="gptq: columns by decreasing Hessian diagonal"),
    static_groups: bool = typer.Option(True, "--static-groups/--no-static-groups",
                                       help="gptq: group grids fixed before the solve (act-order without g_idx)"),
    true_sequential: bool = typer.Option(True, "--true-sequential/--no-true-sequential",
                                         help="statistics of later projections from quantized earlier ones"),
    forward_dtype: str = typer.Option("auto", help="calibration forward passes: float32, bfloat16, or auto "
                                                     "(bfloat16 on CPUs with AVX-512 BF16 / AMX)"),
    calib: Optional[Path] = typer.Option(None, help="calibration text (.txt, .jsonl, .parquet)"),
    nsamples: int = typer.Option(128, help="calibration samples"),
    seqlen: int = typer.Option(512, help="tokens per calibration sample / eval window"),
    seed: int = typer.Option(0),
    fmt: str = typer.Option("compressed-tensors", "--format", help="output format: compressed-tensors, gptq, awq, gguf"),
    gguf_type: Optional[str] = typer.Option(None, help="--format gguf: llama.cpp file type (Q4_K_M default, Q8_0, Q2_K ...)"),
    smooth: str = typer.Option("auto", help="per-channel smoothing before quantizing: auto (GGUF files with gptq, "
                                            "searched against llama.cpp's rounding of weights and inputs), on "
                                            "(integer formats and rtn too; needs calibration), off"),
    resume: bool = typer.Option(False, help="continue a killed run from its per-layer checkpoints beside OUT"),
    checkpoint_seconds: float = typer.Option(60.0, help="save calibration activations for --resume at most this often"),
    max_shard_bytes: int = typer.Option(2 << 30, help="split the output into safetensors shards of at most this size"),
    overwrite: bool = typer.Option(False, help="replace OUT if it exists"),
    allow_pickle: bool = typer.Option(False, help="allow loading pickle (.bin/.pt) weights"),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="evaluate against the base model after"),
    data: Optional[Path] = typer.Option(None, help="evaluation text"),
    max_windows: int = typer.Option(40, help="evaluation windows of --seqlen tokens"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """Quantize MODEL and write it to OUT; then evaluate it against the base model."""
    from lowbit import api
    from lowbit.spec import QuantSpec

    method_args = {"true_sequential": true_sequential, "forward_dtype": forward_dtype, "smooth": smooth}
    if method == "gptq":
        method_args.update(damp_percent=damp_percent, act_order=act_order, static_groups=static_groups)
    spec = QuantSpec(method=method, bits=bits, group_size=group_size, symmetric=sym, clip=clip,
                     method_args=method_args)
    if output is None and fmt == "gguf":
        output = Path(f"{Path(model).stem if model else 'SmolLM2-135M-Instruct'}-{method}-{(gguf_type or 'Q4_K_M').upper()}.gguf")
    output = output or _default_out(model, spec)
    with _Bars(not as_json) as bars:
        summary = api.quantize(model, spec, output, calib=calib, nsamples=nsamples, seqlen=seqlen,
                               seed=seed, overwrite=overwrite, allow_pickle=allow_pickle, progress=bars,
                               format=fmt, resume=resume, checkpoint_seconds=checkpoint_seconds,
                               max_shard_bytes=max_shard_bytes, gguf_type=gguf_type)
        loaded = summary.pop("loaded")
        if summary["layout_changes"] and not as_json:
            _print_layout_changes(summary["layout_changes"])
        res = None
        if evaluate:
            base = (model or "default") if fmt == "gguf" else "auto"  # a GGUF file does not name its base
            res = api.evaluate(str(output), base=base, data=data, seqlen=seqlen,
                               max_windows=max_windows, progress=bars)
    if as_json:
        print(json.dumps({**summary, "eval": res}, indent=2, default=str))
        return
    out.print(f"wrote [bold]{output}[/] ({summary['quantized_modules']} layers quantized "
              f"in {summary['quantize_seconds']:.1f} s)")
    if res:
        _print_eval_table(res, f"{spec.method} w{bits} g{group_size} {'sym' if sym else 'asym'}",
                          summary["quantize_seconds"])
    del loaded


@app.command("eval")
def eval_cmd(
    model: Optional[str] = typer.Argument(None, help="model to evaluate"),
    base: Optional[str] = typer.Option("auto", help="base model; 'none' turns it off"),
    data: Optional[Path] = typer.Option(None, help="evaluation text (.txt, .jsonl, .parquet)"),
    seqlen: int = typer.Option(512, help="tokens per window"),
    max_windows: int = typer.Option(40, help="number of windows (0 = all)"),
    batch_size: int = typer.Option(2),
    allow_pickle: bool = typer.Option(False),
    as_json: bool = typer.Option(False, "--json"),
):
    """Perplexity, KL divergence and top-1 agreement against the base, size and bits/weight."""
    from lowbit import api

    with _Bars(not as_json) as bars:
        res = api.evaluate(model, base=base, data=data, seqlen=seqlen, max_windows=max_windows or None,
                           batch_size=batch_size, allow_pickle=allow_pickle, progress=bars)
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        _print_eval_table(res, f"eval {model or 'default model'}")


@app.command()
def info(model: Optional[str] = typer.Argument(None), allow_pickle: bool = typer.Option(False),
         as_json: bool = typer.Option(False, "--json")):
    """What a model is: architecture, parameters, quantized layers and their layout."""
    from lowbit.eval.size import bits_per_weight, size_on_disk
    from lowbit.io.load import load_model

    loaded = load_model(model, allow_pickle)
    m = loaded.model
    layouts: dict[str, int] = {}
    for qt in loaded.quantized.values():
        key = f"w{qt.bits} g{qt.group_size} {'sym' if qt.symmetric else 'asym'}"
        layouts[key] = layouts.get(key, 0) + 1
    src = Path(loaded.source)
    res = {
        "source": loaded.source, "kind": loaded.kind, "model_type": m.config.model_type,
        "params": sum(p.numel() for p in m.parameters()),
        "layers": m.config.num_hidden_layers, "hidden_size": m.config.hidden_size,
        "vocab_size": m.config.vocab_size, "quantized_layers": len(loaded.quantized),
        "layouts": layouts, "size_bytes": size_on_disk(src) if src.exists() else None,
        "bits_per_weight": bits_per_weight(src) if src.exists() else None,
        "base_model": loaded.meta.get("base_model"),
    }
    if as_json:
        print(json.dumps(res, indent=2))
        return
    t = Table(title=str(loaded.source))
    t.add_column("field")
    t.add_column("value")
    for k, v in res.items():
        t.add_row(k, str(v))
    out.print(t)


@app.command("export")
def export_cmd(
    model: Optional[str] = typer.Argument(None, help="float HF dir, lowbit/GPTQ/AWQ dir, or .gguf file"),
    fmt: str = typer.Option(..., "--format", help="gguf, gptq, gptq-v2, awq or compressed-tensors"),
    output: Path = typer.Option(..., "-o", "--output", help="output directory (NAME.gguf for gguf)"),
    gguf_type: Optional[str] = typer.Option(None, help="GGUF file type (Q8_0, Q4_K_M, ...); default Q8_0"),
    bits: Optional[int] = typer.Option(None, help="re-quantize to these bits (default: the source's)"),
    group_size: Optional[int] = typer.Option(None, help="re-quantize to this group size (default: the source's)"),
    sym: Optional[bool] = typer.Option(None, "--sym/--asym", help="re-quantize to this grid (default: the source's)"),
    overwrite: bool = typer.Option(False, help="replace OUT if it exists"),
    allow_pickle: bool = typer.Option(False),
    as_json: bool = typer.Option(False, "--json"),
):
    """Convert MODEL to another format: losslessly where the target holds its codes, else by
    round-to-nearest (with a one-line warning)."""
    from lowbit.export import export

    res = export(model, fmt, output, gguf_type=gguf_type, bits=bits, group_size=group_size, symmetric=sym,
                 overwrite=overwrite, allow_pickle=allow_pickle,
                 warn=lambda line: print(f"lowbit: warning: {line}", file=sys.stderr))
    if as_json:
        print(json.dumps(res, indent=2, default=str))
        return
    how = "lossless" if res["lossless"] else "lossy"
    out.print(f"wrote [bold]{output}[/] ({res['format']}, {how}: {res['exact']} tensors exact, "
              f"{res['scales_rounded']} with rounded scales, {res['requantized']} re-quantized"
              + (f", {res['kept_float']} kept in float" if res["kept_float"] else "") + f"; {res['seconds']:.1f} s)")


def main():
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import transformers
    transformers.logging.set_verbosity_error()
    try:
        app(standalone_mode=False)
    except LowbitError as e:
        print(f"lowbit: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("lowbit: interrupted (no partial output was left)", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors come through here in non-standalone mode
        import click
        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
