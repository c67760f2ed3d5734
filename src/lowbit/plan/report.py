"""`lowbit plan`: one dict with every figure (the --json output) and a rich table of it.

Keys (../shared/CONTRACT.md): params, weights_bytes {fp32, fp16, bf16, int8, int4} (raw
arithmetic), settings [every grid and GGUF type on the real shapes], kv_cache_bytes {fp16, fp8,
q8_0, q4_0} at the requested context and batch, activation_bytes, training_bytes {full_fp32_adam,
mixed_precision_adam, lora, qlora}, fits [{gpu, vram_bytes, usable_bytes, weights, max_ctx,
fits, by_weights {...}}], recommendation.
"""
from __future__ import annotations

from lowbit.plan import machines as mach
from lowbit.plan import memory, recommend, weights
from lowbit.plan.shapes import ModelShapes

FITS_WEIGHTS = ("fp16", "int8 per channel", "int4 g128", "Q4_K_M")  # the by_weights columns


def plan(shapes: ModelShapes, context: int | None = None, batch: int = 1, kv_cache: str = "fp16",
         runtime: str = "transformers", machine: str | None = None, lora_rank: int = 16,
         this_machine_bytes: int | None = None) -> dict:
    ctx = context if context else min(4096, shapes.max_ctx)
    raw = weights.raw_bytes(shapes.params)
    sets = weights.settings(shapes)
    by_key = {s.name: s.bytes for s in sets if not s.gguf} | {s.key: s.bytes for s in sets if s.gguf}
    by_key |= {"fp16": raw["fp16"], "bf16": raw["bf16"], "fp32": raw["fp32"]}
    kv = {c: memory.kv_cache_bytes(shapes, ctx, batch, c) for c in ("fp16", "fp8", "q8_0", "q4_0")}
    act = memory.activation_bytes(shapes, ctx, batch)
    kv_tok = memory.kv_cache_bytes(shapes, 1, batch, kv_cache)
    act_tok = memory.activation_bytes_per_token(shapes, batch)
    act_fixed = memory.logits_bytes(shapes, batch)
    fits = []
    for m in mach.machines(this_machine_bytes):
        by_w = {}
        for w in FITS_WEIGHTS:
            mc = mach.max_context(m.usable_bytes, by_key[w], kv_tok, act_tok, act_fixed, shapes.max_ctx)
            by_w[w] = {"max_ctx": mc, "fits": mc >= ctx}
        best = next((w for w in FITS_WEIGHTS if by_w[w]["fits"]), None)
        fits.append({"gpu": m.name, "kind": m.kind, "vram_bytes": m.memory_bytes, "usable_bytes": m.usable_bytes,
                     "weights": best, "max_ctx": by_w[best]["max_ctx"] if best else 0, "fits": best is not None,
                     "by_weights": by_w})
    target = _target(fits, machine)
    need = memory.kv_cache_bytes(shapes, ctx, batch, kv_cache) + act
    rec = recommend.recommend(by_key, need, target["usable_bytes"], runtime, raw["bf16"]) if target else None
    if rec is not None:
        rec["machine"] = target["gpu"]
    nf4 = by_key["NF4 + double quant"]
    return {"model": shapes.source, "params": shapes.params, "shapes_exact": shapes.exact_shapes,
            "guessed_dimensions": shapes.guessed,
            "config": {"layers": shapes.layers, "hidden": shapes.hidden, "heads": shapes.heads,
                       "kv_heads": shapes.kv_heads, "head_dim": shapes.head_dim,
                       "intermediate": shapes.intermediate, "vocab": shapes.vocab, "max_ctx": shapes.max_ctx,
                       "tied_embeddings": shapes.tied},
            "ctx": ctx, "batch": batch, "kv_cache_type": kv_cache,
            "weights_bytes": raw, "settings": [s.as_dict() for s in sets],
            "kv_cache_bytes": kv, "activation_bytes": act,
            "training_bytes": memory.training_bytes(shapes, nf4, ctx, batch, lora_rank),
            "lora_rank": lora_rank, "lora_params": memory.lora_params(shapes, lora_rank),
            "fits": fits, "recommendation": rec}


def _target(fits: list[dict], machine: str | None) -> dict | None:
    """The machine the recommendation is for: --machine (a name fragment or a size like 24GB), else this machine."""
    if machine is None:
        return next((f for f in fits if f["kind"] == "this"), fits[-1] if fits else None)
    from lowbit.errors import LowbitError
    from lowbit.plan.sizes import parse_size
    key = machine.strip().lower()
    hit = next((f for f in fits if key in f["gpu"].lower()), None)
    if hit is None:
        try:
            size = parse_size(machine)
        except LowbitError:
            raise LowbitError(f"--machine {machine!r} names no machine of the table: give a size such as 24GB "
                              "or part of a name such as 4090") from None
        hit = {"gpu": f"{machine} of memory", "kind": "given", "vram_bytes": size, "usable_bytes": size}
    return hit


def render(p: dict, console) -> None:
    from rich.table import Table

    def gb(b):
        return "-" if b is None else f"{b / 1e9:,.2f} GB"

    c = p["config"]
    console.print(f"[bold]{p['model']}[/]: {p['params'] / 1e9:,.3f} B parameters, {c['layers']} layers, hidden "
                  f"{c['hidden']}, {c['heads']} heads / {c['kv_heads']} KV heads of {c['head_dim']}, vocab {c['vocab']}"
                  + (f" (guessed from a published Llama shape: {', '.join(p['guessed_dimensions'])})"
                     if p["guessed_dimensions"] else ""))
    raw = Table(title="Weights (parameters x bits; decimal GB)")
    for k in p["weights_bytes"]:
        raw.add_column(k)
    raw.add_row(*(gb(v) for v in p["weights_bytes"].values()))
    console.print(raw)
    t = Table(title="Weights by grid and GGUF type (real shapes, scales included)")
    for col in ("setting", "bits/weight (Linears)", "weights", "how"):
        t.add_column(col)
    for s in p["settings"]:
        t.add_row(s["name"], f"{s['bits_per_weight']:.3f}", gb(s["bytes"]), s["how"])
    console.print(t)
    kv = ", ".join(f"{k} {gb(v)}" for k, v in p["kv_cache_bytes"].items())
    console.print(f"KV cache at {p['ctx']} tokens x batch {p['batch']}: {kv}; activations {gb(p['activation_bytes'])}")
    tr = ", ".join(f"{k} {gb(v)}" for k, v in p["training_bytes"].items())
    console.print(f"Training at {p['ctx']} tokens (LoRA rank {p['lora_rank']}, gradient checkpointing): {tr}")
    f = Table(title=f"Longest context that fits ({p['kv_cache_type']} KV cache, batch {p['batch']})")
    f.add_column("machine")
    f.add_column("usable")
    for w in FITS_WEIGHTS:
        f.add_column(w)
    for row in p["fits"]:
        f.add_row(row["gpu"], gb(row["usable_bytes"]),
                  *(str(row["by_weights"][w]["max_ctx"]) if row["by_weights"][w]["max_ctx"] else "no"
                    for w in FITS_WEIGHTS))
    console.print(f)
    r = p["recommendation"]
    if r is None:
        return
    if r["fits"]:
        kld = r.get("measured_kld_default_model")
        console.print(f"[bold]Recommended for {r['runtime']} on {r['machine']}[/]: {r['setting']} ({r['tier']}), "
                      f"{gb(r['total_bytes'])} of {gb(r['usable_bytes'])} with the cache: `{r['command']}`"
                      + (f"; measured KLD on lowbit's default model {kld}" if kld is not None else ""))
    else:
        console.print(f"[bold red]Nothing fits {r['machine']}[/] ({gb(r['usable_bytes'])}): {r['advice']}")
