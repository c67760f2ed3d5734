"""The command line: bad input gives exit 2 and one line; a full run on a tiny model."""
import json

import pytest
import torch

from clitools import one_line_error, run
from tiny import VOCAB, tiny_model

def test_missing_path(capsys, tmp_path):
    code, _, err = run(["quantize", str(tmp_path / "nope"), "-o", str(tmp_path / "o")], capsys)
    one_line_error(code, err, "does not exist")


def test_not_a_model(capsys, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    code, _, err = run(["info", str(f)], capsys)
    one_line_error(code, err, "not a model")


def test_pickle_refused_without_flag(capsys, tmp_path, tiny_dir):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text((tiny_dir / "config.json").read_text())
    torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")
    code, _, err = run(["info", str(d)], capsys)
    one_line_error(code, err, "pickle", "--allow-pickle")


def test_corrupt_config(capsys, tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    code, _, err = run(["info", str(d)], capsys)
    one_line_error(code, err, "config.json", "not valid JSON")


@pytest.mark.parametrize("args,word", [(["--bits", "9"], "bits=9"), (["--group-size", "-7"], "group size")])
def test_bad_numbers(capsys, tmp_path, tiny_dir, args, word):
    code, _, err = run(["quantize", str(tiny_dir), "-o", str(tmp_path / "o"), *args], capsys)
    one_line_error(code, err, word)
    assert not (tmp_path / "o").exists()


def test_output_exists_refused(capsys, tmp_path, tiny_dir):
    (tmp_path / "o").mkdir()
    code, _, err = run(["quantize", str(tiny_dir), "-o", str(tmp_path / "o")], capsys)
    one_line_error(code, err, "already exists", "--overwrite")


def test_unsupported_architecture(capsys, tmp_path, default_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel
    d = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB)).save_pretrained(d)
    default_tokenizer.save_pretrained(d)
    code, _, err = run(["quantize", str(d), "-o", str(tmp_path / "o"), "--no-eval"], capsys)
    one_line_error(code, err, "not supported", "llama")
    assert not (tmp_path / "o").exists()


def test_quantize_then_eval_json(capsys, tmp_path, tiny_dir, text_file):
    out = tmp_path / "q"
    code, stdout, err = run(["quantize", str(tiny_dir), "-o", str(out), "--bits", "4", "--group-size", "32",
                             "--data", str(text_file), "--seqlen", "64", "--max-windows", "3", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["quantized_modules"] == 14 and summary["eval"]["windows"] == 3
    code, stdout, err = run(["eval", str(out), "--data", str(text_file), "--seqlen", "64",
                             "--max-windows", "3", "--json"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    for key in ("perplexity", "base_perplexity", "kld", "top1_agreement", "tokens", "windows", "seqlen",
                "bits_per_weight", "size_bytes", "base_size_bytes"):
        assert key in res, key
    assert res["tokens"] == 3 * 63 and res["kld"] > 0 and res["perplexity"] > 1
    # 4-bit codes + one fp32 scale per group of 24 (72-wide rows) or 32 (128-wide rows)
    assert 5.0 < res["bits_per_weight"] < 5.4
    code, stdout, _ = run(["eval", str(out), "--base", "none", "--data", str(text_file), "--seqlen", "64",
                           "--max-windows", "3", "--json"], capsys)
    assert code == 0 and "kld" not in json.loads(stdout)
    code, stdout, _ = run(["info", str(out), "--json"], capsys)
    info = json.loads(stdout)
    assert info["quantized_layers"] == 14 and info["base_model"] == str(tiny_dir.resolve())


def test_gguf_records_its_base_and_info_shows_its_types(capsys, tmp_path, tiny_dir, text_file):
    """A GGUF lowbit wrote names its base model in its metadata, so eval compares against it with
    no --base; info reports the file type and how many tensors of each GGML type it holds."""
    out = tmp_path / "q.gguf"
    code, stdout, err = run(["quantize", str(tiny_dir), "-o", str(out), "--method", "rtn", "--format", "gguf",
                             "--gguf-type", "Q8_0", "--no-eval", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    code, stdout, err = run(["eval", str(out), "--data", str(text_file), "--seqlen", "64", "--max-windows", "2",
                             "--json"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["base"] == str(tiny_dir.resolve()) and res["kld"] > 0
    code, stdout, _ = run(["info", str(out), "--json"], capsys)
    info = json.loads(stdout)
    assert info["gguf_type"] == "Q8_0" and info["base_model"] == str(tiny_dir.resolve())
    # 72-wide rows are not a multiple of 32: llama.cpp's rules fall back to F16 for those matrices,
    # and the summary's count of the plan is what the file holds
    assert info["tensor_types"] == summary["tensor_types"]
    assert info["quantized_layers"] == sum(n for t, n in info["tensor_types"].items() if t not in ("F32", "F16"))


def test_short_calibration_text_refused(capsys, tmp_path, tiny_dir):
    pytest.importorskip("lowbit.methods.gptq")
    short = tmp_path / "short.txt"
    short.write_text("too short")
    code, _, err = run(["quantize", str(tiny_dir), "-o", str(tmp_path / "o"), "--method", "gptq",
                        "--calib", str(short), "--no-eval"], capsys)
    one_line_error(code, err, "calibration text", "--calib")


def test_nan_weights_refused(capsys, tmp_path, default_tokenizer):
    d = tmp_path / "nan"
    model = tiny_model("llama", vocab=VOCAB)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(d)
    default_tokenizer.save_pretrained(d)
    code, _, err = run(["quantize", str(d), "-o", str(tmp_path / "o"), "--no-eval"], capsys)
    one_line_error(code, err, "NaN", "up_proj")
    assert not (tmp_path / "o").exists()


def test_info_reads_a_gguf_file(capsys):
    from lowbit.io.default_model import default_gguf
    code, stdout, err = run(["info", str(default_gguf()), "--json"], capsys)
    assert code == 0, err
    info = json.loads(stdout)
    assert info["kind"] == "gguf" and info["model_type"] == "llama"
    assert info["layers"] == 30 and info["hidden_size"] == 576
    assert abs(info["params"] - 134.5e6) < 0.1e6
