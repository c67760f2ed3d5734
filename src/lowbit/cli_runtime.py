"""Commands that run a model: lowbit generate / chat / bench (names and JSON keys:
shared/CONTRACT.md). Registered on the main app by cli.py."""
from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

out = Console()
DTYPE_HELP = "activations and float weights: float32, bfloat16, float16 (int4 / int8 kernels compute in bf16)"
EXACT_HELP = "int4 / int8 kernels in float32: the dequantized model's tokens, but slow (a check, not a mode to run)"
COMPILE_HELP = "torch.compile the decode step: faster decoding after ~45 s of compiling on first use"


def _load(model, dtype, allow_pickle, exact=False):
    from lowbit.runtime.load import load_for_running, runtime_dtype

    return load_for_running(model, runtime_dtype(dtype), allow_pickle, exact)


def _sampling(temperature, top_p, top_k, seed):
    from lowbit.runtime.generate import Sampling

    return Sampling(temperature, top_p, top_k, seed)


def _write(piece: str):
    sys.stdout.write(piece)
    sys.stdout.flush()


def register(app: typer.Typer, command) -> None:
    @app.command()
    @command
    def generate(
        model: str = typer.Argument(..., help="model: quantized or float directory, .gguf, or 'default'"),
        prompt: str = typer.Argument(..., help="the prompt"),
        max_new_tokens: int = typer.Option(128, help="at most this many new tokens (stops at EOS)"),
        chat: bool = typer.Option(False, "--chat", help="wrap the prompt in the tokenizer's chat template"),
        temperature: float = typer.Option(0.0, help="0: greedy; > 0: sampling"),
        top_p: float = typer.Option(1.0, help="nucleus sampling: keep the smallest set of tokens with this mass"),
        top_k: int = typer.Option(0, help="sample among the k most likely tokens (0: all)"),
        seed: int = typer.Option(0, help="sampling seed"),
        dtype: str = typer.Option("float32", help=DTYPE_HELP),
        compile: bool = typer.Option(False, "--compile", help=COMPILE_HELP),
        exact: bool = typer.Option(False, "--exact", help=EXACT_HELP),
        allow_pickle: bool = typer.Option(False),
    ):
        """Generate text, streaming the tokens as they come (packed quantized weights, real kernels)."""
        from lowbit.runtime.generate import generate as run

        sampling = _sampling(temperature, top_p, top_k, seed)
        loaded = _load(model, dtype, allow_pickle, exact)
        run(loaded, prompt, max_new_tokens, chat, sampling, on_text=_write, compile=compile)
        _write("\n")

    @app.command()
    @command
    def chat(
        model: str = typer.Argument(..., help="model: quantized or float directory, .gguf, or 'default'"),
        max_new_tokens: int = typer.Option(256, help="at most this many new tokens per answer"),
        temperature: float = typer.Option(0.0, help="0: greedy; > 0: sampling"),
        top_p: float = typer.Option(1.0),
        top_k: int = typer.Option(0),
        seed: int = typer.Option(0),
        system: Optional[str] = typer.Option(None, help="a system message to start the conversation with"),
        dtype: str = typer.Option("float32", help=DTYPE_HELP),
        compile: bool = typer.Option(False, "--compile", help=COMPILE_HELP),
        allow_pickle: bool = typer.Option(False),
    ):
        """Talk to a model in the terminal, with the conversation's history (/reset clears it, /exit or Ctrl-D ends)."""
        from lowbit.runtime.generate import generate as run

        sampling = _sampling(temperature, top_p, top_k, seed)
        loaded = _load(model, dtype, allow_pickle)
        history = [{"role": "system", "content": system}] if system else []
        print("lowbit chat: /reset clears the history, /exit or Ctrl-D ends", file=sys.stderr)
        while True:
            try:
                line = input("> ")
            except EOFError:
                print(file=sys.stderr)
                return
            if line.strip() in ("/exit", "/quit"):
                return
            if line.strip() == "/reset":
                history = history[:1] if system else []
                continue
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            answer = run(loaded, history, max_new_tokens, True, sampling, on_text=_write, compile=compile)
            _write("\n")
            history.append({"role": "assistant", "content": answer})

    @app.command()
    @command
    def bench(
        model: Optional[str] = typer.Argument(None, help="model to measure (default: the default model)"),
        base: Optional[str] = typer.Option("auto", help="base to measure in the same run; 'none' turns it off"),
        prompt_tokens: int = typer.Option(128, help="prompt length (real text)"),
        new_tokens: int = typer.Option(64, help="tokens generated per decode measurement"),
        reps: int = typer.Option(3, help="repetitions (the median is reported)"),
        threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's)"),
        dtype: str = typer.Option("float32", help=DTYPE_HELP),
        compile: bool = typer.Option(False, "--compile", help=COMPILE_HELP),
        exact: bool = typer.Option(False, "--exact", help=EXACT_HELP),
        as_json: bool = typer.Option(False, "--json"),
    ):
        """Prefill and decode tokens/s and peak RSS, batch 1, for the model and its base in the same run."""
        from lowbit.errors import LowbitError
        from lowbit.runtime.load import runtime_dtype
        from lowbit.runtime.speed import bench as run

        runtime_dtype(dtype)
        if prompt_tokens < 1 or new_tokens < 2 or reps < 1:
            raise LowbitError("--prompt-tokens must be >= 1, --new-tokens >= 2 and --reps >= 1")
        res = run(model, base, prompt_tokens=prompt_tokens, new_tokens=new_tokens, reps=reps, dtype=dtype,
                  threads=threads, compile=compile, exact=exact)
        if as_json:
            print(json.dumps(res, indent=2))
            return
        t = Table(title=f"bench {model or 'default model'}: batch 1, {prompt_tokens}-token prompt, "
                        f"{new_tokens} new tokens, median of {reps}")
        for col in ("model", "prefill tok/s", "decode tok/s", "peak RSS", "model RSS", "kernels"):
            t.add_column(col)
        rows = [res] + ([res["base"]] if "base" in res else [])
        for r in rows:
            kernels = ", ".join(f"{k} x{n}" for k, n in r["kernels"].items()) or "float"
            t.add_row(r["model"], f"{r['prefill_tokens_per_s']:.1f}", f"{r['decode_tokens_per_s']:.1f}",
                      f"{r['peak_rss_bytes'] / 1e6:.0f} MB", f"{r['model_rss_bytes'] / 1e6:.0f} MB", kernels)
        out.print(t)
        if "base" in res:
            out.print(f"decode {res['decode_speedup']:.2f}x the base, prefill {res['prefill_speedup']:.2f}x, "
                      f"peak RSS {res['peak_rss_ratio']:.2f}x")
