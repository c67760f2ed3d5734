"""The bit-budget planner: a setting per Linear that minimises the predicted loss
(plan/sensitivity.py) under a budget of bits per weight or of file size, written as a recipe
that `lowbit quantize --recipe` runs.

Choosing one option per Linear under a total size is a multiple-choice knapsack, solved by a
dynamic program over the budget cut into 65536 steps (each option's bytes rounded up to whole
steps, so the plan always fits; exact when the budget has fewer bytes than steps); the bytes the
rounding leaves are then spent greedily on the upgrades with the most error removed per byte.
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import torch

from lowbit.errors import LowbitError
from lowbit.plan.sensitivity import CANDIDATES, Option, gather_statistics, label, options_for


STEPS = 1 << 16  # the budget's resolution in the dynamic program: a plan wastes at most n / STEPS of it


def _total(choice: dict[str, Option]) -> int:
    return sum(o.bytes for o in choice.values())


def allocate(table: dict[str, list[Option]], budget_bytes: int, weights: int) -> dict[str, Option]:
    """One option per Linear, total bytes <= budget_bytes, the smallest sum of predicted errors
    (weights: the Linears' weight count, for the message)."""
    names = list(table)
    smallest = {n: min(opts, key=lambda o: o.bytes) for n, opts in table.items()}
    if _total(smallest) > budget_bytes:
        raise LowbitError(f"the budget ({8 * budget_bytes / weights:.2f} bits per weight for the Linears) is below the "
                          f"smallest setting ({8 * _total(smallest) / weights:.2f}): raise --target-bpw / --max-size")
    steps = min(STEPS, budget_bytes)
    unit = budget_bytes / steps
    best = np.full(steps + 1, np.inf)  # best[c]: least error of the Linears so far in c steps
    best[0] = 0.0
    picks = np.zeros((len(names), steps + 1), dtype=np.int16)
    for i, n in enumerate(names):
        new = np.full(steps + 1, np.inf)
        for k, o in enumerate(table[n]):
            c = int(np.ceil(o.bytes / unit - 1e-9))  # rounded up: the plan always fits
            if c > steps:
                continue
            cand = best[:steps + 1 - c] + o.error
            better = cand < new[c:]
            new[c:][better] = cand[better]
            picks[i, c:][better] = k
        best = new
    c = int(np.argmin(best))
    choice = {}
    for i in range(len(names) - 1, -1, -1):  # walk the choices back
        o = table[names[i]][picks[i, c]]
        choice[names[i]] = o
        c -= int(np.ceil(o.bytes / unit - 1e-9))
    choice = {n: choice[n] for n in names}
    left = budget_bytes - _total(choice)
    while True:  # what the rounding left: the best error removed per byte that still fits
        up = None
        for n, opts in table.items():
            cur = choice[n]
            for o in opts:
                extra, gain = o.bytes - cur.bytes, cur.error - o.error
                if 0 < extra <= left and gain > 0 and (up is None or gain / extra > up[0]):
                    up = (gain / extra, n, o)
        if up is None:
            return choice
        _, n, o = up
        left -= o.bytes - choice[n].bytes
        choice[n] = o


def uniform(table: dict[str, list[Option]], bits: int, group: int) -> dict[str, Option]:
    return {n: next(o for o in opts if (o.bits, o.group_size) == (bits, group)) for n, opts in table.items()}


def recipe_dict(choice: dict[str, Option], method: str, symmetric: bool, method_args: dict) -> dict:
    """The recipe: the most common setting as the default, every other Linear an override."""
    common = Counter((o.bits, o.group_size) for o in choice.values()).most_common(1)[0][0]
    overrides = [{"match": re.escape(n), "bits": o.bits, "group_size": o.group_size}
                 for n, o in choice.items() if (o.bits, o.group_size) != common]
    return {"method": method, "grid": "int", "bits": common[0], "group_size": common[1], "symmetric": symmetric,
            "method_args": method_args, "overrides": overrides}


def summary(choice: dict[str, Option], weights: dict[str, int]) -> dict:
    total_w = sum(weights.values())
    counts = Counter(label(o.bits, o.group_size) for o in choice.values())
    return {"bits_per_weight": 8 * _total(choice) / total_w, "linear_bytes": _total(choice),
            "predicted_error": sum(o.error for o in choice.values()), "settings": dict(counts.most_common())}


def plan_budget(model: torch.nn.Module, calibration: torch.Tensor, *, target_bpw: float | None = None,
                max_size: int | None = None, method: str = "gptq", symmetric: bool = True,
                fmt: str = "compressed-tensors", candidates=CANDIDATES, progress=None) -> dict:
    """Measure every Linear at every candidate setting, allocate the budget, and return the plan:
    the recipe (dict), what it predicts, each uniform setting's prediction, and the table."""
    from lowbit.io.formats import get_format
    from lowbit.pipeline.sequential import target_linears
    from lowbit.spec import QuantSpec

    if (target_bpw is None) == (max_size is None):
        raise LowbitError("give the budget as --target-bpw BITS or as --max-size SIZE (one of them)")
    base = QuantSpec(method=method, bits=4, group_size=128, symmetric=symmetric)
    targets = target_linears(model, base)
    weights = {n: m.weight.numel() for n, m in targets.items()}
    total_w = sum(weights.values())
    seen, rest = set(), 0
    for name, t in model.state_dict(keep_vars=True).items():
        if name.removesuffix(".weight") in targets or (t.data_ptr(), t.shape) in seen:
            continue
        seen.add((t.data_ptr(), t.shape))
        rest += t.numel() * t.element_size()
    budget = int(target_bpw * total_w / 8) if target_bpw is not None else max_size - rest
    if budget <= 0:
        raise LowbitError(f"--max-size is below the float tensors alone ({rest / 1e6:.1f} MB): raise it")
    stats = gather_statistics(model, targets, calibration, progress=progress)
    writer = get_format(fmt)
    table = {}
    for k, (name, module) in enumerate(targets.items()):
        observer, F = stats.pop(name)
        table[name] = options_for(name, module.weight.data, observer, F, base, writer, candidates)
        del observer
        if progress:
            progress("settings", k + 1, len(targets))
    choice = allocate(table, budget, total_w)
    uniforms = []
    for bits, group in candidates:
        u = uniform(table, bits, group)
        uniforms.append({"setting": label(bits, group), **summary(u, weights),
                         "fits": _total(u) <= budget})
    fitting = [u for u in uniforms if u["fits"]]
    best = min(fitting, key=lambda u: u["predicted_error"]) if fitting else None
    return {"budget_bytes": budget, "target_bpw": target_bpw, "max_size": max_size, "float_bytes": rest,
            "method": method, "format": fmt, "planned": summary(choice, weights),
            "best_uniform": best, "uniform": uniforms,
            "recipe": recipe_dict(choice, method, symmetric, {}),
            "modules": {n: {"chosen": label(o.bits, o.group_size), "options": [x.as_dict() for x in table[n]]}
                        for n, o in choice.items()}}
