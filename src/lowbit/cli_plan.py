"""lowbit plan: memory at every precision and grid, KV cache, training, what fits where, and a
recommendation (names and JSON keys: shared/CONTRACT.md). Registered on the main app by cli.py."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

out = Console()


def register(app: typer.Typer, command) -> None:
    @app.command()
    @command
    def plan(
        model: Optional[str] = typer.Argument(None, help="model directory, .gguf, hub id (online), or omitted: the default model"),
        params: Optional[str] = typer.Option(None, help="plan a Llama of N parameters instead of a model (7e9, 7B)"),
        layers: Optional[int] = typer.Option(None, help="with --params: decoder layers"),
        hidden: Optional[int] = typer.Option(None, help="with --params: hidden size"),
        intermediate: Optional[int] = typer.Option(None, help="with --params: MLP width"),
        heads: Optional[int] = typer.Option(None, help="with --params: attention heads"),
        kv_heads: Optional[int] = typer.Option(None, help="with --params: KV heads (grouped-query attention)"),
        vocab: Optional[int] = typer.Option(None, help="with --params: vocabulary size"),
        ctx: Optional[int] = typer.Option(None, help="context length in tokens (default: 4096 or the model's maximum)"),
        batch: int = typer.Option(1, help="sequences at once"),
        kv_cache: str = typer.Option("fp16", help="KV cache type: fp16, bf16, fp32, fp8, q8_0, q4_0"),
        runtime: str = typer.Option("transformers", help="where it will run: llama.cpp, ollama, vllm, transformers, lowbit"),
        machine: Optional[str] = typer.Option(None, help="recommend for this machine: a size (24GB) or part of a "
                                                         "name in the table (4090); default: this machine's free RAM"),
        lora_rank: int = typer.Option(16, help="adapter rank for the LoRA / QLoRA training estimate"),
        target_bpw: Optional[float] = typer.Option(None, help="bit-budget planner: a setting per Linear with this many "
                                                              "bits per weight on average (scales included)"),
        max_size: Optional[str] = typer.Option(None, help="bit-budget planner: the largest checkpoint (80MB, 4GiB)"),
        output: Optional[Path] = typer.Option(None, "-o", "--output", help="bit-budget planner: write the recipe here "
                                                                           "(for lowbit quantize --recipe)"),
        method: str = typer.Option("gptq", help="bit-budget planner: the method whose error is measured (gptq, rtn)"),
        nsamples: int = typer.Option(64, help="bit-budget planner: calibration samples of 512 tokens"),
        as_json: bool = typer.Option(False, "--json"),
    ):
        """Will it fit, and what should I use? Weights at every precision and grid (real shapes,
        scales included), KV cache, activations, training memory, the longest context per machine."""
        from lowbit.errors import LowbitError
        from lowbit.plan.memory import KV_BYTES
        from lowbit.plan.recommend import RUNTIMES
        from lowbit.plan.report import plan as make_plan, render
        from lowbit.plan.shapes import from_params, model_shapes, parse_count

        if target_bpw is not None or max_size is not None or output is not None:
            return _plan_bits(model, params, target_bpw, max_size, output, method, nsamples, as_json)
        if runtime not in RUNTIMES:
            raise LowbitError(f"--runtime {runtime!r} is unknown: use one of {', '.join(RUNTIMES)}")
        if kv_cache not in KV_BYTES:
            raise LowbitError(f"--kv-cache {kv_cache!r} is unknown: use one of {', '.join(KV_BYTES)}")
        if batch < 1 or (ctx is not None and ctx < 1) or lora_rank < 1:
            raise LowbitError("--batch, --ctx and --lora-rank must be at least 1")
        dims = dict(layers=layers, hidden=hidden, intermediate=intermediate, heads=heads, kv_heads=kv_heads, vocab=vocab)
        if params is not None and model is not None:
            raise LowbitError("give a MODEL or --params, not both")
        if params is None and any(v is not None for v in dims.values()):
            raise LowbitError("--layers / --hidden / --heads ... describe a model given by --params: add --params (its parameter count, such as 7B)")
        shapes = from_params(parse_count(params), **dims) if params is not None else model_shapes(model)
        p = make_plan(shapes, context=ctx, batch=batch, kv_cache=kv_cache, runtime=runtime, machine=machine,
                      lora_rank=lora_rank)
        if as_json:
            print(json.dumps(p, indent=2))
        else:
            render(p, out)


def _plan_bits(model, params, target_bpw, max_size, output, method, nsamples, as_json) -> None:
    """plan --target-bpw / --max-size: measure, allocate, print, write the recipe."""
    from rich.table import Table

    from lowbit import api
    from lowbit.errors import LowbitError
    from lowbit.plan.sizes import parse_size
    from lowbit.recipe import Recipe

    if params is not None:
        raise LowbitError("the bit-budget planner measures a real model: give MODEL, not --params")
    if (target_bpw is None) == (max_size is None):
        raise LowbitError("give the budget as --target-bpw BITS or as --max-size SIZE (one of them)")
    if output is not None and output.exists() and not output.is_file():
        raise LowbitError(f"-o {output} is a directory: give the recipe a file name such as plan.yaml")
    p = api.plan_bits(model, target_bpw=target_bpw, max_size=parse_size(max_size) if max_size else None,
                      method=method, nsamples=nsamples)
    text = Recipe.from_dict(p["recipe"], "the plan").to_yaml()
    if output is not None:
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(output)  # whole or not at all
        p["recipe_file"] = str(output)
    if as_json:
        print(json.dumps(p, indent=2))
        return
    t = Table(title=f"bit budget for {p['model']}: {_budget_text(p)}")
    for col in ("setting", "bits/weight (Linears)", "Linear MB", "predicted loss", "fits"):
        t.add_column(col)
    plan = p["planned"]
    t.add_row("planned mix: " + ", ".join(f"{k} x{v}" for k, v in plan["settings"].items()),
              f"{plan['bits_per_weight']:.3f}", f"{plan['linear_bytes'] / 1e6:.1f}", f"{plan['predicted_error']:.4g}", "yes")
    for u in p["uniform"]:
        t.add_row(u["setting"], f"{u['bits_per_weight']:.3f}", f"{u['linear_bytes'] / 1e6:.1f}",
                  f"{u['predicted_error']:.4g}", "yes" if u["fits"] else "no")
    out.print(t)
    best = p["best_uniform"]
    if best:
        out.print(f"predicted loss {plan['predicted_error'] / best['predicted_error']:.2f}x the best uniform setting "
                  f"that fits ({best['setting']})")
    out.print(f"recipe: {output}  (lowbit quantize MODEL --recipe {output} -o OUT)" if output else
              "give -o RECIPE to write the recipe")


def _budget_text(p: dict) -> str:
    if p["target_bpw"] is not None:
        return f"{p['target_bpw']} bits per weight"
    return f"{p['max_size'] / 1e6:.1f} MB on disk ({p['float_bytes'] / 1e6:.1f} MB of it float tensors)"
