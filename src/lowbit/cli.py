"""Command line: lowbit quantize / eval / info / export, and generate / chat / bench (cli_runtime.py)
(names and JSON keys: shared/CONTRACT.md)."""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from lowbit import cli_plan, cli_runtime
from lowbit.errors import LowbitError
from lowbit.progress import LineProgress

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Quantize LLMs layer by layer and measure what it cost.")
err = Console(stderr=True)
out = Console()
# evaluation windows by default: 24 x 512 tokens keep the standard error of the main job's KLD
# under 5% (measured 4.9% at 20 windows, 3.1% at 40; docs/results.md)
DEFAULT_WINDOWS = 24
EVAL_DTYPE_HELP = ("evaluation forwards: float32, or bfloat16 (decoders under bf16 autocast, heads in float32; "
                   "1.85x faster here but +18% KLD on an 8-bit model, so not the default), or auto (bf16 on "
                   "CPUs with native bf16)")
# what an interrupted command kept, newest last (a command appends as it goes)
_interrupt_notes: list[Callable[[], str]] = []


def _fail(code: int, line: str):
    print(f"lowbit: {line}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _command(fn):
    """Every command's errors as one line: bad input exits 2, Ctrl-C 130 saying what was kept,
    anything unexpected 1 (LOWBIT_DEBUG=1 shows its traceback). No traceback reaches a user."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        _interrupt_notes.clear()
        try:
            return fn(*args, **kwargs)
        except LowbitError as e:
            _fail(2, f"error: {e}")
        except KeyboardInterrupt:
            _fail(130, "interrupted: " + (_interrupt_notes[-1]() if _interrupt_notes else "nothing was written"))
        except MemoryError:
            _fail(1, "error: out of memory: free memory, or use a smaller model or fewer --nsamples")
        except Exception as e:  # a bug, not the user's input
            if os.environ.get("LOWBIT_DEBUG"):
                raise
            first = (str(e).strip().splitlines() or [""])[0][:300]
            _fail(1, f"internal error: {type(e).__name__}: {first} (a bug in lowbit: rerun with LOWBIT_DEBUG=1 "
                     "for the traceback and report it)")
    return run


class _Bars:
    """Maps progress(stage, done, total) callbacks onto rich progress bars (on stderr)."""

    def __init__(self):
        self.progress = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False)
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


@contextlib.contextmanager
def _progress(as_json: bool):
    """Bars on a terminal; elsewhere (logs, CI, pipes) one line per step with the time left."""
    if err.is_terminal and not as_json:
        with _Bars() as bars:
            yield bars
    else:
        yield LineProgress(lambda line: print(f"lowbit: {line}", file=sys.stderr, flush=True))


def _version(value: bool):
    if value:
        from lowbit import __version__
        print(f"lowbit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print lowbit's version and exit")):
    """Quantize LLMs layer by layer and measure what it cost."""


def _default_out(model: Optional[str], spec) -> Path:
    base = Path(model).stem if model else "SmolLM2-135M-Instruct"
    if spec.grid != "int":
        return Path(f"{base}-{spec.method}-{spec.grid}" + ("" if spec.double_quant else "-nodq"))
    g = f"g{spec.group_size}" if spec.group_size > 0 else ""
    sym = "" if spec.symmetric else "-asym"
    return Path(f"{base}-{spec.method}-w{spec.bits}{g}{sym}")


def _mb(n) -> str:
    return "-" if n is None else f"{n / 1e6:,.1f} MB"


def _fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def _print_eval_table(res: dict, title: str, quantize_seconds: float | None = None):
    stderr = res.get("kld_stderr")
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
        ("KL divergence (nats/token)", _fmt(res.get("kld"), ".5f")
         + (f" ± {stderr:.5f}" if stderr is not None and math.isfinite(stderr) else "")),
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
              + ", ".join(f"{k} ({n} layers)" for k, n in kinds.items()) + "; recorded in lowbit.json", soft_wrap=True)


def _given(**flags) -> list[str]:
    return [name for name, value in flags.items() if value is not None]


def _from_recipe(path, model, fmt, gguf_type, nsamples, seqlen, seed, calib, **spec_options):
    """(spec, format, gguf type, nsamples, seqlen, seed, calibration file) from a recipe, checked against the model's
    Linear names before any weight is read. The recipe is the whole spec: options that would change
    it beside --recipe are refused; --format / --gguf-type / --nsamples given beside it win."""
    from lowbit.plan.shapes import model_shapes
    from lowbit.recipe import Recipe

    given = [f"--{k.replace('_', '-')}" for k, v in spec_options.items() if v is not None]
    if given:
        raise LowbitError(f"{given[0]} beside --recipe: the recipe sets the whole quantization; edit the recipe "
                          "or drop the option")
    r = Recipe.load(path)
    r.check_matches(n.removesuffix(".weight") for n in model_shapes(model).linears)
    cal = r.calibration
    seqlen = cal.get("seqlen", seqlen) if seqlen == 512 else seqlen
    seed = cal.get("seed", seed) if seed == 0 else seed
    source = cal.get("source")
    return (r.spec, fmt or r.format, gguf_type or r.gguf_type, nsamples or cal.get("nsamples"), seqlen, seed,
            calib or (Path(source) if source else None))


# methods whose settings are their own (int8 weights per channel with int8 activations): their
# preset is the default when no --preset is given
METHOD_PRESETS = {"smoothquant": "w8a8", "llm-int8": "llm-int8"}


def _quantize_spec(preset_name, method, bits, group_size, sym, clip, damp_percent, act_order, static_groups,
                   true_sequential, forward_dtype, smooth, grid=None, double_quant=None, rotate=None,
                   iters=None):
    """The QuantSpec a quantize command asks for: the preset (default: lowbit's best measured
    4-bit recipe), then every option given beside it; options that do not apply are refused."""
    from lowbit.methods.gptq import GPTQOptions
    from lowbit.options import WalkOptions
    from lowbit.spec import BEST_4BIT, CODE_BOOK_GRIDS, FP8_GRIDS, MICROSCALING, QuantSpec, preset

    base = preset(preset_name or METHOD_PRESETS.get(method) or BEST_4BIT)
    walk, gptq = WalkOptions(), GPTQOptions()  # the defaults of options not given
    method = method or base.method
    gptq_only = _given(**{"--damp-percent": damp_percent, "--act-order/--no-act-order": act_order,
                          "--static-groups/--no-static-groups": static_groups})
    if method != "gptq" and gptq_only:
        raise LowbitError(f"{gptq_only[0]} applies to --method gptq only, not {method}: drop it or use --method gptq")
    if iters is not None and method != "signround":
        raise LowbitError(f"--iters applies to --method signround only, not {method}: drop it or use --method signround")
    method_args = {"true_sequential": walk.true_sequential if true_sequential is None else true_sequential,
                   "forward_dtype": forward_dtype, "smooth": smooth}
    # given, or the preset's (best-4bit rotates where it helps); the default preset's rotation
    # goes with its method: `--method rtn` alone means RTN as it is
    preset_rotate = base.method_args.get("rotate", "none") if preset_name or method == base.method else "none"
    rotate = rotate or preset_rotate
    if rotate != "none":
        method_args["rotate"] = rotate
    if iters is not None:
        method_args["iters"] = iters
    if method == "gptq":
        method_args.update(damp_percent=gptq.damp_percent if damp_percent is None else damp_percent,
                           act_order=gptq.act_order if act_order is None else act_order,
                           static_groups=gptq.static_groups if static_groups is None else static_groups)
    grid = grid or base.grid
    if grid not in CODE_BOOK_GRIDS and double_quant is not None:
        raise LowbitError("--double-quant/--no-double-quant applies to --grid nf4 or fp4 only: drop it or use --grid nf4")
    if grid in CODE_BOOK_GRIDS:
        if sym is not None or clip is not None:
            raise LowbitError(f"{'--sym/--asym' if sym is not None else '--clip'} applies to the int grid, not {grid} "
                              "(a fixed code book scaled by each block's absmax): drop it")
        default_group = base.group_size if base.grid == grid else 64  # bitsandbytes' block: 64 weights
        return QuantSpec(method=method, grid=grid, bits=4 if bits is None else bits,
                         group_size=default_group if group_size is None else group_size,
                         double_quant=base.double_quant if double_quant is None else double_quant,
                         method_args=method_args)
    if grid in MICROSCALING:
        block = MICROSCALING[grid]
        if sym is not None or clip is not None or group_size not in (None, block):
            scales = "float8 scales and a global scale" if grid == "nvfp4" else "power-of-two (e8m0) scales"
            raise LowbitError(f"--sym/--asym, --clip and --group-size do not apply to --grid {grid} (e2m1 in blocks "
                              f"of {block} with {scales}): drop them")
        return QuantSpec(method=method, grid=grid, bits=4 if bits is None else bits, group_size=block,
                         method_args=method_args)
    if grid in FP8_GRIDS:
        if sym is not None or clip is not None:
            raise LowbitError(f"{'--sym/--asym' if sym is not None else '--clip'} applies to the int grid, not {grid} "
                              "(float8 codes scaled by each tile's absmax): drop it")
        default_group = base.group_size if base.grid == grid else -1  # FP8: a scale per output channel
        return QuantSpec(method=method, grid=grid, bits=8 if bits is None else bits,
                         group_size=default_group if group_size is None else group_size, method_args=method_args)
    return QuantSpec(method=method, bits=base.bits if bits is None else bits,
                     group_size=base.group_size if group_size is None else group_size,
                     symmetric=base.symmetric if sym is None else sym,
                     clip=clip or base.clip, act=base.act, method_args=method_args)


def _title(spec, fmt: str, gguf_type: str | None) -> str:
    from lowbit.spec import CODE_BOOK_GRIDS, FP8_GRIDS, MICROSCALING

    if fmt == "gguf":
        return f"{spec.method} {(gguf_type or 'Q4_K_M').upper()} (GGUF)"
    if spec.grid in MICROSCALING:
        return f"{spec.method} {spec.grid}"
    if spec.grid in FP8_GRIDS:
        tile = {0: "per tensor", -1: "per channel"}.get(spec.group_size, f"b{spec.group_size}x{spec.group_size}")
        return f"{spec.method} {spec.grid} {tile}"
    if spec.grid in CODE_BOOK_GRIDS:
        return f"{spec.method} {spec.grid} b{spec.group_size}" + (" double-quant" if spec.double_quant else "")
    g = f"g{spec.group_size}" if spec.group_size > 0 else ("per channel" if spec.group_size == -1 else "per tensor")
    return f"{spec.method} w{spec.bits} {g} {'sym' if spec.symmetric else 'asym'}"


def _kept(output: Path) -> str:
    """What an interrupted quantize leaves, and how to continue it."""
    from lowbit.pipeline.layer_store import layers_saved, work_dir_for

    work = work_dir_for(output)
    n = layers_saved(work) if work.is_dir() else 0
    if not n:
        return f"nothing was written at {output}"
    return (f"nothing was written at {output}; {n} finished layers are kept in {work}: "
            "rerun the same command with --resume to continue")


def _confirm_discard(output: Path, resume: bool, overwrite: bool) -> bool:
    """A partial run of OUT that is not resumed is kept unless --overwrite or the user says so."""
    from lowbit.pipeline.layer_store import layers_saved, work_dir_for

    work = work_dir_for(output)
    if resume or overwrite or not work.is_dir() or not sys.stdin.isatty():
        return overwrite
    return typer.confirm(f"a partial run of {output} ({layers_saved(work)} layers done) is in {work}; "
                         "discard it and start over? (--resume continues it)", default=False, err=True)


@app.command()
@_command
def quantize(
    model: Optional[str] = typer.Argument(None, help="HF directory, .gguf file, hub id; default SmolLM2-135M"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="output directory (NAME.gguf for gguf)"),
    preset_name: Optional[str] = typer.Option(None, "--preset", help="a preset such as w4g128, gptq-w4g128, w8, "
                                              "best-4bit (the default); options given beside it override it"),
    method: Optional[str] = typer.Option(None, help="quantization method: gptq (default, lowbit's best measured "
                                         "4-bit method), rtn, awq, hqq, signround, smoothquant, llm-int8"),
    bits: Optional[int] = typer.Option(None, help="bits per weight, 2..8 (default 4)"),
    group_size: Optional[int] = typer.Option(None, help="group size; -1 per channel, 0 per tensor (default 128)"),
    sym: Optional[bool] = typer.Option(None, "--sym/--asym", help="symmetric grid (default) or asymmetric with zero point"),
    grid: Optional[str] = typer.Option(None, help="number grid: int (integer affine, default), nf4 "
                                       "(NormalFloat-4 in blocks of --group-size, 64 by default), fp4 "
                                       "(bitsandbytes' e2m1 code book, the same blocks), fp8 / fp8-e5m2 "
                                       "(a scale per channel; --group-size 0 per tensor, 128 per 128x128 block), nvfp4 "
                                       "(e2m1, float8 scale per 16, a global scale), mxfp4 (e2m1, power-of-two scale per 32)"),
    double_quant: Optional[bool] = typer.Option(None, "--double-quant/--no-double-quant",
                                                help="nf4 / fp4: store block absmax values in 8 bits (default on)"),
    clip: Optional[str] = typer.Option(None, help="grid range: minmax, mse (clipping search), auto (rtn: minmax, gptq: mse)"),
    damp_percent: Optional[float] = typer.Option(None, help="gptq: dampening, fraction of the mean Hessian diagonal (0.01)"),
    act_order: Optional[bool] = typer.Option(None, "--act-order/--no-act-order",
                                             help="gptq: columns by decreasing Hessian diagonal (default on)"),
    static_groups: Optional[bool] = typer.Option(None, "--static-groups/--no-static-groups",
                                                 help="gptq: group grids fixed before the solve (default on)"),
    iters: Optional[int] = typer.Option(None, help="signround: signed-gradient steps per decoder layer (50)"),
    true_sequential: Optional[bool] = typer.Option(None, "--true-sequential/--no-true-sequential",
                                                   help="statistics of later projections from quantized earlier ones"),
    forward_dtype: str = typer.Option("auto", help="calibration forward passes: float32, bfloat16, or auto "
                                                     "(bfloat16 on CPUs with AVX-512 BF16 / AMX)"),
    calib: Optional[Path] = typer.Option(None, help="calibration text (.txt, .jsonl, .parquet) or named texts "
                                           "joined by '+' (wiki, gutenberg, handbook, code, legal); default "
                                           "wiki+gutenberg+handbook in equal parts"),
    nsamples: Optional[int] = typer.Option(None, help="calibration samples (128)"),
    seqlen: int = typer.Option(512, help="tokens per calibration sample / eval window"),
    seed: int = typer.Option(0),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer directory, for a model saved without one"),
    fmt: Optional[str] = typer.Option(None, "--format",
                                      help="output format: compressed-tensors (default; bnb for llm-int8), gptq, "
                                           "gptq-v2, awq, bnb, gguf"),
    gguf_type: Optional[str] = typer.Option(None, help="--format gguf: llama.cpp file type (Q4_K_M default, Q8_0, Q2_K ...)"),
    smooth: str = typer.Option("auto", help="per-channel smoothing before quantizing: auto (GGUF files with gptq, "
                                            "searched against llama.cpp's rounding of weights and inputs), on "
                                            "(integer formats and rtn too; needs calibration), off"),
    rotate: Optional[str] = typer.Option(None, help="exact rotation before quantizing: hadamard (random Hadamard rotation "
                                            "of the residual stream and per head, folded into the weights; "
                                            "Llama / Mistral / Qwen), auto (best-4bit's: hadamard on integer grids "
                                            "where the model allows, else none) or none"),
    recipe: Optional[Path] = typer.Option(None, help="a recipe file (YAML / TOML: method, grid, transforms, per-module "
                                                     "overrides by regex), or OUT/recipe.yaml of an earlier run"),
    resume: bool = typer.Option(False, help="continue a killed run from its per-layer checkpoints beside OUT"),
    checkpoint_seconds: Optional[float] = typer.Option(None, help="save calibration activations for --resume at most "
                                                       "this often (default: once the work since the last save is "
                                                       "worth 10x the save, at least every minute)"),
    max_shard_bytes: int = typer.Option(2 << 30, help="split the output into safetensors shards of at most this size"),
    overwrite: bool = typer.Option(False, help="replace OUT if lowbit wrote it, and discard a partial run of it"),
    allow_pickle: bool = typer.Option(False, help="allow loading pickle (.bin/.pt) weights"),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="evaluate against the base model after"),
    data: Optional[Path] = typer.Option(None, help="evaluation text"),
    max_windows: Optional[int] = typer.Option(None, help=f"evaluation windows of --seqlen tokens ({DEFAULT_WINDOWS})"),
    eval_dtype: str = typer.Option("float32", help=EVAL_DTYPE_HELP),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """Quantize MODEL and write it to OUT; then evaluate it against the base model."""
    from lowbit import api
    from lowbit.convert import check_format_arguments
    from lowbit.methods import get_method
    from lowbit.pipeline.smoothing import check_smooth, needs_calibration

    check_smooth(smooth)
    if recipe is not None:
        spec, fmt, gguf_type, nsamples, seqlen, seed, calib = _from_recipe(
            recipe, model, fmt, gguf_type, nsamples, seqlen, seed, calib, preset_name=preset_name, method=method, bits=bits,
            group_size=group_size, sym=sym, clip=clip, damp_percent=damp_percent, act_order=act_order,
            static_groups=static_groups, true_sequential=true_sequential, grid=grid, double_quant=double_quant,
            smooth=None if smooth == "auto" else smooth, iters=iters)
    else:
        spec = _quantize_spec(preset_name, method, bits, group_size, sym, clip, damp_percent, act_order,
                              static_groups, true_sequential, forward_dtype, smooth, grid, double_quant, rotate,
                              iters)
    fmt = fmt or ("bnb" if spec.act == "llm-int8" else "compressed-tensors")  # where each scheme runs
    if output is None:
        stem = Path(model).stem if model else "SmolLM2-135M-Instruct"
        output = Path(f"{stem}-{spec.method}-{(gguf_type or 'Q4_K_M').upper()}.gguf") if fmt == "gguf" \
            else _default_out(model, spec)
    check_format_arguments(fmt, output, gguf_type, bits, group_size, sym, command="quantize")
    calibrates = get_method(spec.method).needs_calibration or needs_calibration(spec)
    if not calibrates and (calib is not None or nsamples is not None):
        raise LowbitError(f"{'--calib' if calib is not None else '--nsamples'} applies to methods that calibrate "
                          f"(gptq) or to --smooth on, not {spec.method}: drop it")
    if not evaluate and (data is not None or max_windows is not None):
        raise LowbitError(f"{'--data' if data is not None else '--max-windows'} applies to the evaluation, "
                          "which --no-eval turns off: drop one of them")
    discard = _confirm_discard(output, resume, overwrite)
    _interrupt_notes.append(lambda: _kept(output))
    with _progress(as_json) as bars:
        summary = api.quantize(model, spec, output, calib=calib, nsamples=nsamples or 128, seqlen=seqlen,
                               seed=seed, overwrite=overwrite, allow_pickle=allow_pickle, progress=bars,
                               format=fmt, resume=resume, checkpoint_seconds=checkpoint_seconds,
                               max_shard_bytes=max_shard_bytes, gguf_type=gguf_type, tokenizer=tokenizer,
                               discard_partial=discard)
        _interrupt_notes.append(lambda: f"{output} is written and kept; the evaluation was stopped")
        loaded = summary.pop("loaded")
        if summary["layout_changes"] and not as_json:
            _print_layout_changes(summary["layout_changes"])
        res = None
        if evaluate:
            res = api.evaluate(str(output), base="auto", data=data, seqlen=seqlen, eval_dtype=eval_dtype,
                               max_windows=max_windows or DEFAULT_WINDOWS, progress=bars, tokenizer=tokenizer)
    if as_json:
        print(json.dumps({**summary, "eval": res}, indent=2, default=str))
        return
    out.print(f"wrote [bold]{output}[/] ({summary['quantized_modules']} layers quantized "
              f"in {summary['quantize_seconds']:.1f} s)")
    if res:
        _print_eval_table(res, _title(spec, fmt, gguf_type), summary["quantize_seconds"])
    del loaded


@app.command("eval")
@_command
def eval_cmd(
    model: Optional[str] = typer.Argument(None, help="model to evaluate"),
    base: Optional[str] = typer.Option("auto", help="base model; 'none' turns it off"),
    data: Optional[Path] = typer.Option(None, help="evaluation text (.txt, .jsonl, .parquet) or a named text: "
                                          "wiki (default, held out), code, legal, gutenberg, handbook"),
    seqlen: int = typer.Option(512, help="tokens per window"),
    max_windows: int = typer.Option(DEFAULT_WINDOWS, help="number of windows (0 = all)"),
    stride: Optional[int] = typer.Option(None, help="sliding windows: one starts every STRIDE tokens and scores "
                                                    "its last STRIDE (default: non-overlapping, the GPTQ protocol)"),
    batch_size: int = typer.Option(2),
    eval_dtype: str = typer.Option("float32", help=EVAL_DTYPE_HELP),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer directory, for a model saved without one"),
    no_cache: bool = typer.Option(False, "--no-cache", help="run the base model even if its outputs are cached"),
    allow_pickle: bool = typer.Option(False),
    as_json: bool = typer.Option(False, "--json"),
):
    """Perplexity, KL divergence and top-1 agreement against the base, size and bits/weight."""
    from lowbit import api

    with _progress(as_json) as bars:
        res = api.evaluate(model, base=base, data=data, seqlen=seqlen, max_windows=max_windows or None,
                           batch_size=batch_size, allow_pickle=allow_pickle, progress=bars, tokenizer=tokenizer,
                           eval_dtype=eval_dtype, cache_base=not no_cache, stride=stride)
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        _print_eval_table(res, f"eval {model or 'default model'}")


@app.command()
@_command
def info(model: Optional[str] = typer.Argument(None), allow_pickle: bool = typer.Option(False),
         as_json: bool = typer.Option(False, "--json")):
    """What a model is: architecture, parameters, quantized layers and their layout."""
    from lowbit.eval.size import bits_per_weight, size_on_disk
    from lowbit.io.load import load_model

    loaded = load_model(model, allow_pickle)
    m = loaded.model
    layouts: dict[str, int] = {}
    for qt in loaded.quantized.values():
        layouts[qt.describe()] = layouts.get(qt.describe(), 0) + 1
    if loaded.kind == "gguf":  # a GGUF's layout is its tensor types
        layouts = {t: n for t, n in loaded.meta.get("tensor_types", {}).items() if t not in ("F32", "F16", "BF16")}
    src = Path(loaded.source)
    res = {
        "source": loaded.source, "kind": loaded.kind, "model_type": m.config.model_type,
        "params": sum(p.numel() for p in m.parameters()),
        "layers": m.config.num_hidden_layers, "hidden_size": m.config.hidden_size,
        "vocab_size": m.config.vocab_size,
        "quantized_layers": sum(layouts.values()) if loaded.kind == "gguf" else len(loaded.quantized),
        "layouts": layouts, "size_bytes": size_on_disk(src) if src.exists() else None,
        "bits_per_weight": bits_per_weight(src) if src.exists() else None,
        "base_model": loaded.meta.get("base_model"),
    }
    if loaded.kind == "gguf":
        res.update(gguf_type=loaded.meta.get("gguf_type"), tensor_types=loaded.meta.get("tensor_types"))
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
@_command
def export_cmd(
    model: Optional[str] = typer.Argument(None, help="float HF dir, lowbit/GPTQ/AWQ dir, or .gguf file"),
    fmt: str = typer.Option(..., "--format", help="gguf, gptq, gptq-v2, awq or compressed-tensors"),
    output: Path = typer.Option(..., "-o", "--output", help="output directory (NAME.gguf for gguf)"),
    gguf_type: Optional[str] = typer.Option(None, help="GGUF file type (Q8_0, Q4_K_M, ...); default Q8_0"),
    bits: Optional[int] = typer.Option(None, help="re-quantize to these bits (default: the source's)"),
    group_size: Optional[int] = typer.Option(None, help="re-quantize to this group size (default: the source's)"),
    sym: Optional[bool] = typer.Option(None, "--sym/--asym", help="re-quantize to this grid (default: the source's)"),
    overwrite: bool = typer.Option(False, help="replace OUT if it exists"),
    ollama: bool = typer.Option(False, "--ollama", help="gguf: also write an Ollama Modelfile beside OUT (template, stops)"),
    allow_pickle: bool = typer.Option(False),
    as_json: bool = typer.Option(False, "--json"),
):
    """Convert MODEL to another format: losslessly where the target holds its codes, else by
    round-to-nearest (with a one-line warning)."""
    from lowbit.convert import export

    res = export(model, fmt, output, gguf_type=gguf_type, bits=bits, group_size=group_size, symmetric=sym,
                 overwrite=overwrite, allow_pickle=allow_pickle, ollama=ollama,
                 warn=lambda line: print(f"lowbit: warning: {line}", file=sys.stderr))
    if as_json:
        print(json.dumps(res, indent=2, default=str))
        return
    how = "lossless" if res["lossless"] else "lossy"
    out.print(f"wrote [bold]{output}[/] ({res['format']}, {how}: {res['exact']} tensors exact, "
              f"{res['scales_rounded']} with rounded scales, {res['requantized']} re-quantized"
              + (f", {res['kept_float']} kept in float" if res["kept_float"] else "") + f"; {res['seconds']:.1f} s)")


cli_runtime.register(app, _command)  # generate, chat, bench
cli_plan.register(app, _command)  # plan


class _OncePerMessage(logging.Filter):
    """Each warning once, however many layers or calls raise it."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        kind = "note" if record.levelno == logging.INFO else record.levelname.lower()
        return f"lowbit: {kind}: {record.getMessage()}"


def _sigterm(signum, frame):  # a kill by a scheduler cleans up like Ctrl-C
    raise KeyboardInterrupt


def main():
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter())
    handler.addFilter(_OncePerMessage())
    level = getattr(logging, os.environ.get("LOWBIT_LOG", "warning").upper(), logging.WARNING)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("lowbit.progress").propagate = False  # the CLI shows progress itself
    logging.getLogger("lowbit.note").setLevel(min(level, logging.INFO))  # what a user should know
    if not err.is_terminal:  # libraries' own tqdm bars are noise in a log file
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        import transformers
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # a broken transformers install is reported by the command that needs it
        pass
    previous = None
    with contextlib.suppress(ValueError):  # not in the main thread: keep the default
        previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        app()  # typer reports usage errors itself: the usage line and exit status 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
