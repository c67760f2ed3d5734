"""Recipes: a quantization as a YAML / TOML file with per-module overrides; every output keeps its
recipe, and quantizing again from it makes the same bytes; bad recipes are one-line errors before
any weight is read."""
import hashlib
from pathlib import Path

import pytest

from clitools import one_line_error, run
from lowbit.recipe import Recipe

RECIPE = """
method: gptq
bits: 4
group_size: 32
method_args: {damp_percent: 0.02}
calibration: {nsamples: 4, seqlen: 64, seed: 3}
overrides:
  - {match: 'model\\.layers\\.\\d+\\.mlp\\.down_proj', bits: 8, group_size: -1}
  - {match: 'model\\.layers\\.0\\.self_attn\\.q_proj', keep: float}
"""


def _digests(d: Path) -> dict:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.glob("*.safetensors"))}


def test_recipe_overrides_reach_the_spec(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(RECIPE)
    r = Recipe.load(f)
    assert r.spec.method == "gptq" and r.spec.group_size == 32 and r.spec.method_args["damp_percent"] == 0.02
    down = r.spec.for_module("model.layers.5.mlp.down_proj")
    assert (down.bits, down.group_size) == (8, -1)
    assert r.spec.for_module("model.layers.5.mlp.up_proj").bits == 4
    assert "re:model\\.layers\\.0\\.self_attn\\.q_proj" in r.spec.ignore
    assert r.calibration == {"nsamples": 4, "seqlen": 64, "seed": 3}
    toml = tmp_path / "r.toml"
    toml.write_text('method = "rtn"\nbits = 3\n[[overrides]]\nmatch = ".*v_proj"\nbits = 8\n')
    t = Recipe.load(toml)
    assert t.spec.bits == 3 and t.spec.for_module("model.layers.1.self_attn.v_proj").bits == 8
    # the written form reads back as the same spec
    again = tmp_path / "again.yaml"
    again.write_text(r.to_yaml())
    assert Recipe.load(again).spec == r.spec


def test_quantize_from_the_saved_recipe_makes_the_same_bytes(tmp_path, tiny_dir, capsys):
    f = tmp_path / "r.yaml"
    f.write_text(RECIPE)
    out1, out2 = tmp_path / "one", tmp_path / "two"
    code, _, err = run(["quantize", str(tiny_dir), "--recipe", str(f), "-o", str(out1), "--no-eval"], capsys)
    assert code == 0, err
    saved = out1 / "recipe.yaml"
    assert saved.is_file()
    import json
    q = json.loads((out1 / "config.json").read_text())["quantization_config"]
    assert "model.layers.0.self_attn.q_proj" in q["ignore"]
    meta = json.loads((out1 / "lowbit.json").read_text())
    assert meta["calibration"]["nsamples"] == 4 and meta["calibration"]["seed"] == 3
    code, _, err = run(["quantize", str(tiny_dir), "--recipe", str(saved), "-o", str(out2), "--no-eval"], capsys)
    assert code == 0, err
    assert _digests(out1) == _digests(out2) and _digests(out1)
    assert (out2 / "recipe.yaml").read_text() == saved.read_text()


def test_gguf_keeps_its_recipe(tmp_path, tiny_dir, capsys):
    out = tmp_path / "m.gguf"
    code, _, err = run(["quantize", str(tiny_dir), "--method", "rtn", "--format", "gguf", "--gguf-type", "Q8_0",
                        "-o", str(out), "--no-eval"], capsys)
    assert code == 0, err
    r = Recipe.load(out)
    assert (r.format, r.gguf_type, r.spec.method) == ("gguf", "Q8_0", "rtn")
    out2 = tmp_path / "m2.gguf"
    code, _, err = run(["quantize", str(tiny_dir), "--recipe", str(out), "-o", str(out2), "--no-eval"], capsys)
    assert code == 0, err
    assert out.read_bytes() == out2.read_bytes()


@pytest.mark.parametrize("text,words", [
    ("method: rtn\ngroup_sise: 64\n", ["group_sise", "group_size"]),
    ("method: rtn\noverrides:\n  - {match: 'model\\.layers\\.\\d+\\.mlp\\.dwn_proj', bits: 8}\n", ["matches no Linear"]),
    ("method: rtn\noverrides:\n  - {match: '(unclosed', bits: 8}\n", ["not a valid regex"]),
    ("method: rtn\nbits: 3\nformat: awq\n", ["AWQ", "3"]),
    ("method: rtn\noverrides:\n  - {match: '.*', methd: gptq}\n", ["methd"]),
    ("method: [rtn\n", ["does not parse"]),
])
def test_bad_recipes_are_one_line_errors_before_loading(tmp_path, tiny_dir, capsys, text, words):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    out = tmp_path / "out"
    code, _, err = run(["quantize", str(tiny_dir), "--recipe", str(f), "-o", str(out), "--no-eval"], capsys)
    one_line_error(code, err, *words)
    assert not out.exists()


def test_spec_options_beside_a_recipe_are_refused(tmp_path, tiny_dir, capsys):
    f = tmp_path / "r.yaml"
    f.write_text("method: rtn\n")
    code, _, err = run(["quantize", str(tiny_dir), "--recipe", str(f), "--bits", "3", "-o", str(tmp_path / "o")], capsys)
    one_line_error(code, err, "--bits", "--recipe")
