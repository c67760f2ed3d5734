"""lowbit plan: memory at every precision and grid, KV cache, training, what fits where, and a
recommendation (names and JSON keys: shared/CONTRACT.md). Registered on the main app by cli.py."""
from __future__ import annotations

import json
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
        as_json: bool = typer.Option(False, "--json"),
    ):
        """Will it fit, and what should I use? Weights at every precision and grid (real shapes,
        scales included), KV cache, activations, training memory, the longest context per machine."""
        from lowbit.errors import LowbitError
        from lowbit.plan.memory import KV_BYTES
        from lowbit.plan.recommend import RUNTIMES
        from lowbit.plan.report import plan as make_plan, render
        from lowbit.plan.shapes import from_params, model_shapes, parse_count

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
