"""The bit-budget planner: the allocation is the knapsack's optimum on a hand-worked table and
on random ones (brute force); the statistics are the mean squared output gradient and GPTQ's H as
autograd and the inputs give them; a Linear's predicted error is sum_o F_o dW_o H dW_o^T; a
planned recipe quantizes to the bits per weight it planned, read back from the files."""
import itertools
import json

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.plan.budget import allocate, recipe_dict
from lowbit.plan.sensitivity import Option, gather_statistics, options_for
from tiny import tiny_model


def _opt(bits, nbytes, err):
    return Option(bits, 64, 64, nbytes, err)


def test_allocation_on_a_hand_worked_table():
    table = {"a": [_opt(2, 10, 100.0), _opt(4, 20, 10.0), _opt(8, 40, 1.0)],
             "b": [_opt(2, 10, 50.0), _opt(4, 20, 40.0), _opt(8, 40, 39.0)]}
    # budget 50: a4 + b4 (40 bytes, 50) beats a8 + b2 (50 bytes, 51) and a4 + b2 (30 bytes, 60)
    got = allocate(table, 50, 100)
    assert (got["a"].bits, got["b"].bits) == (4, 4)
    assert (allocate(table, 80, 100)["a"].bits, allocate(table, 80, 100)["b"].bits) == (8, 8)
    assert {o.bits for o in allocate(table, 20, 100).values()} == {2}
    with pytest.raises(LowbitError, match="is below the smallest setting"):
        allocate(table, 19, 100)


def test_allocation_is_the_brute_force_optimum():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        table = {}
        for n in range(5):  # error falls with bytes, as quantization error does, at random rates
            nbytes = sorted(torch.randint(5, 100, (4,), generator=g).tolist())
            errs = sorted((torch.rand(4, generator=g) * 100).tolist(), reverse=True)
            table[f"m{n}"] = [_opt(b, nb, e) for b, nb, e in zip((2, 3, 4, 8), nbytes, errs)]
        budget = int(sum(min(o.bytes for o in v) for v in table.values()) * 1.6)
        best = min((sum(o.error for o in c), c) for c in itertools.product(*table.values())
                   if sum(o.bytes for o in c) <= budget)[0]
        got = allocate(table, budget, 1000)
        assert sum(o.bytes for o in got.values()) <= budget
        assert sum(o.error for o in got.values()) == pytest.approx(best, rel=1e-12), trial  # budget < 65536 bytes: exact


def test_statistics_are_the_output_gradients_and_the_hessian():
    model = tiny_model("llama")
    ids = torch.randint(0, 512, (4, 24), generator=torch.Generator().manual_seed(0))
    name = "model.layers.1.mlp.down_proj"
    lin = model.get_submodule(name)
    stats = gather_statistics(model, {name: lin}, ids, batch_size=2)
    observer, F = stats[name]
    # independent: autograd on the whole batch, the Linear's input and output kept
    seen = {}

    def keep(m, args, out):
        out.retain_grad()
        seen["x"], seen["y"] = args[0].detach(), out
    h = lin.register_forward_hook(keep)
    for p in model.parameters():
        p.requires_grad_(True)
    logits = model(ids).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                             reduction="sum")
    loss.backward()
    h.remove()
    want_F = seen["y"].grad.double().pow(2).sum((0, 1)) / ids.numel()
    torch.testing.assert_close(F, want_F, rtol=1e-4, atol=1e-12)
    x = seen["x"].reshape(-1, lin.in_features).double()
    torch.testing.assert_close(observer.H.double(), 2 * x.T @ x / len(x), rtol=1e-4, atol=1e-6)
    # the predicted error of a setting: sum_o F_o dW_o H dW_o^T with RTN's dW, by hand
    from lowbit.formats import quantize_rtn
    from lowbit.spec import QuantSpec
    W = lin.weight.data
    from lowbit.io.formats import get_format
    (opt,) = options_for(name, W, observer, F, QuantSpec(method="rtn", bits=3, group_size=32),
                         get_format("compressed-tensors"), candidates=((3, 32),))
    dW = (W - quantize_rtn(W, 3, True, opt.fitted_group).dequantize()).double()
    H = observer.H.double()
    assert opt.error == pytest.approx(float(sum(F[o] * dW[o] @ H @ dW[o] for o in range(len(F)))), rel=1e-6)
    assert opt.bits == 3 and opt.fitted_group in (32, 36)  # the format may fit the group to 72-wide rows


def test_recipe_keeps_the_common_setting_as_default():
    choice = {"model.layers.0.a": _opt(4, 1, 0), "model.layers.1.a": _opt(4, 1, 0), "model.layers.1.b": _opt(8, 1, 0)}
    r = recipe_dict(choice, "gptq", True, {})
    assert (r["bits"], r["group_size"]) == (4, 64)
    assert r["overrides"] == [{"match": r"model\.layers\.1\.b", "bits": 8, "group_size": 64}]


def test_planned_recipe_quantizes_to_the_planned_size(tmp_path, capsys, default_tokenizer, text_file):
    """plan --target-bpw 3.5 -o RECIPE, then quantize --recipe RECIPE: the file's bits per weight
    (read from its tensors) is the plan's, and no more than the target."""
    from clitools import run
    from tiny import VOCAB

    src = tmp_path / "src"
    tiny_model("llama", vocab=VOCAB).save_pretrained(src)
    default_tokenizer.save_pretrained(src)
    recipe = tmp_path / "plan.yaml"
    code, stdout, err = run(["plan", str(src), "--target-bpw", "3.5", "-o", str(recipe), "--nsamples", "4",
                             "--json"], capsys)
    assert code == 0, err
    p = json.loads(stdout)
    assert p["planned"]["bits_per_weight"] <= 3.5
    assert len(p["planned"]["settings"]) >= 2  # a mix, not one setting
    assert p["best_uniform"]["predicted_error"] >= p["planned"]["predicted_error"]
    out = tmp_path / "out"
    code, stdout, err = run(["quantize", str(src), "--recipe", str(recipe), "-o", str(out), "--calib",
                             str(text_file), "--nsamples", "8", "--seqlen", "64", "--no-eval", "--json"], capsys)
    assert code == 0, err
    from lowbit.eval.size import bits_per_weight
    assert bits_per_weight(out) == pytest.approx(p["planned"]["bits_per_weight"], rel=1e-3)


def test_plan_budget_needs_one_budget(capsys):
    from clitools import run
    code, _, err = run(["plan", "--target-bpw", "3", "--max-size", "10MB"], capsys)
    assert code == 2 and "give the budget as --target-bpw BITS or as --max-size SIZE (one of them)" in err
