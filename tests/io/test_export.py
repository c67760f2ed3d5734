"""lowbit export: lossless repacking where the target holds the source's codes (dequantized
weights bit-identical), round-to-nearest otherwise with a one-line warning, bad input as one
line with exit 2; and `eval` of a GGUF file read by lowbit's own reader."""
import json

import gguf
import numpy as np
import pytest
import torch

from lowbit import api
from lowbit.eval.size import bits_per_weight
from lowbit.convert import export
from lowbit.io.load import load_model
from lowbit.spec import QuantSpec
from clitools import PROSE, one_line_error, run
from tiny import VOCAB, tiny_model


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, default_tokenizer):
    """A float tiny Llama, its GPTQ w4g8 asym file, and a compressed-tensors w4g8 sym file (fp32 scales)."""
    root = tmp_path_factory.mktemp("export")
    tiny_model("llama", vocab=VOCAB).save_pretrained(root / "float")
    default_tokenizer.save_pretrained(root / "float")
    api.quantize(str(root / "float"), QuantSpec(bits=4, group_size=8, symmetric=False), root / "gptq", format="gptq")
    api.quantize(str(root / "float"), QuantSpec(bits=4, group_size=8), root / "ct32")
    api.quantize(str(root / "float"), QuantSpec(bits=3, group_size=8), root / "gptq3", format="gptq")
    (root / "prose.txt").write_text(PROSE)
    return root


def linear_weights(path) -> dict:
    m = load_model(str(path)).model
    return {n: mod.weight.detach().clone() for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)}


def assert_identical(a, b):
    a, b = linear_weights(a), linear_weights(b)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_integer_formats_repack_losslessly(dirs, tmp_path):
    # GPTQ 4-bit g8 asym -> AWQ -> GPTQ v2 -> compressed-tensors -> GPTQ v1: the codes, zero points and
    # fp16 scales move as they are; AWQ keeps the 36-wide k/v projections in float (exact too)
    src = dirs / "gptq"
    for fmt in ("awq", "gptq-v2", "compressed-tensors", "gptq"):
        out = tmp_path / fmt
        s = export(str(src), fmt, out)
        assert s["lossless"] and s["warning"] is None and s["requantized"] == s["scales_rounded"] == 0
        assert s["exact"] == 10 and s["kept_float"] == (4 if fmt == "awq" else 0)
        assert_identical(dirs / "gptq", out)
        assert json.loads((out / "lowbit.json").read_text())["base_model"] == str((dirs / "float").resolve())
        src = out
    back = load_model(str(src))
    assert {qt.bits for qt in back.quantized.values()} == {4} and len(back.quantized) == 10


def test_fp32_scales_into_gptq_keep_codes_and_warn(dirs, tmp_path, capsys):
    out = tmp_path / "g"
    code, stdout, err = run(["export", str(dirs / "ct32"), "--format", "gptq", "-o", str(out), "--json"], capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "lossy" in lines[0] and "scales rounded to float16" in lines[0]
    s = json.loads(stdout)
    assert s["scales_rounded"] == 14 and s["requantized"] == 0 and not s["lossless"]
    src, dst = load_model(str(dirs / "ct32")).quantized, load_model(str(out)).quantized
    for name, qt in src.items():
        assert torch.equal(dst[name].q, qt.q) and torch.equal(dst[name].scale, qt.scale.half().float())


def test_requantize_when_bits_do_not_fit(dirs, tmp_path, capsys):
    code, _, err = run(["export", str(dirs / "gptq3"), "--format", "awq", "-o", str(tmp_path / "a")], capsys)
    one_line_error(code, err, "awq holds 4-bit codes", "3-bit", "--bits 4")
    assert not (tmp_path / "a").exists()
    s = export(str(dirs / "gptq3"), "awq", tmp_path / "a", bits=4)
    assert s["requantized"] == 10 and s["kept_float"] == 4 and "3 -> 4 bits" in s["warning"]
    back = load_model(str(tmp_path / "a")).quantized
    assert {(qt.bits, qt.group_size) for qt in back.values()} == {(4, 8)}


def test_gguf_targets_and_sources(dirs, tmp_path, capsys, tiny_tok):
    from lowbit.io.gguf_reader import read_gguf
    small = tmp_path / "small"  # a 512-token vocabulary: GGUF vocabularies of 49k tokens take seconds to parse
    tiny_model("llama", vocab=512).save_pretrained(small)
    tiny_tok.save_pretrained(small)
    # float -> GGUF with the default type (Q8_0): lossy, one warning line
    f = tmp_path / "q8.gguf"
    code, _, err = run(["export", str(small), "--format", "gguf", "-o", str(f)], capsys)
    assert code == 0 and "lossy" in err and "Q8_0" in err, err
    r = gguf.GGUFReader(f)
    assert gguf.GGMLQuantizationType.Q8_0 in {t.tensor_type for t in r.tensors}
    # GGUF -> GGUF of the same type: blocks copied byte for byte, lossless
    s = export(str(f), "gguf", tmp_path / "q8b.gguf", gguf_type="Q8_0")
    assert s["lossless"] and s["copied_blocks"] > 0
    a = {t.name: np.asarray(t.data).tobytes() for t in r.tensors}
    b = {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(tmp_path / "q8b.gguf").tensors}
    assert a == b
    # GGUF -> GPTQ: dequantized and re-quantized (lossy)
    s = export(str(f), "gptq", tmp_path / "fromgguf", bits=8, group_size=8)
    assert s["requantized"] == 14 and not s["lossless"]
    # quantized -> GGUF F32: the dequantized weights exactly
    s = export(str(dirs / "gptq"), "gguf", tmp_path / "f32.gguf", gguf_type="F32")
    assert s["lossless"]
    back, _ = read_gguf(tmp_path / "f32.gguf", with_tokenizer=False)
    for name, qt in load_model(str(dirs / "gptq")).quantized.items():
        assert torch.equal(back.get_submodule(name).weight, qt.dequantize()), name

    # eval: load.py reads .gguf with lowbit's reader; eval of the GGUF gives the perplexity of the
    # same (dequantized) weights saved as safetensors, and eval --json reports its bits per weight
    loaded = load_model(str(f))
    assert loaded.kind == "gguf"
    same = tmp_path / "same"
    loaded.model.save_pretrained(same)
    loaded.tokenizer.save_pretrained(same)
    args = ["--base", "none", "--data", str(dirs / "prose.txt"), "--seqlen", "64", "--max-windows", "3", "--json"]
    code, out1, err = run(["eval", str(f), *args], capsys)
    assert code == 0, err
    code, out2, err = run(["eval", str(same), *args], capsys)
    assert code == 0, err
    r1, r2 = json.loads(out1), json.loads(out2)
    assert r1["tokens"] == r2["tokens"] == 3 * 63
    assert r1["perplexity"] == r2["perplexity"]
    # the 128-wide down_proj rows are Q8_0 (8.5 bits), the 72-wide rows fall back to F16 (not counted)
    assert r1["bits_per_weight"] == 8.5 and r1["size_bytes"] == f.stat().st_size
    code, out3, err = run(["eval", str(dirs / "gptq"), *args], capsys)
    assert code == 0 and json.loads(out3)["bits_per_weight"] == bits_per_weight(dirs / "gptq") > 4


@pytest.mark.parametrize("ftype,fmt", [("Q4_0", "gptq"), ("Q4_0", "awq"), ("Q8_0", "gptq"), ("Q5_0", "compressed-tensors"),
                                      ("Q6_K", "compressed-tensors"), ("Q3_K_S", "compressed-tensors"), ("Q3_K_S", "gptq")])
def test_gguf_integer_blocks_repack_losslessly(tmp_path, tiny_tok, ftype, fmt):
    """Q8_0 / Q4_0 / Q5_0 blocks are w = d * (q - 2**(b-1)) in groups of 32 with an fp16 d, Q6_K / Q3_K
    w = d * sc * (q - 2**(b-1)) in groups of 16: they move into integer formats that hold those bits
    without re-quantizing, and dequantize to the GGUF's weights (Q3_K into GPTQ: fp16-rounded scales)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from lowbit.io.gguf_writer import write_gguf
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    f = write_gguf(tmp_path / "m.gguf", model, tiny_tok, ftype)
    s = export(str(f), fmt, tmp_path / "out")
    src, dst = load_model(str(f)), load_model(str(tmp_path / "out"))
    assert {qt.bits for qt in dst.quantized.values()} == {int(ftype[1])} and len(dst.quantized) == 7
    if ftype == "Q3_K_S" and fmt == "gptq":
        assert s["scales_rounded"] == 7 and s["requantized"] == 0 and "lossy" in s["warning"]
        for name, qt in dst.quantized.items():
            w = src.model.get_submodule(name).weight
            torch.testing.assert_close(qt.dequantize(), w, rtol=2**-10, atol=0)
        return
    assert s["lossless"] and s["exact"] == 7 and s["requantized"] == 0
    for name in dst.quantized:
        assert torch.equal(src.model.get_submodule(name).weight, dst.model.get_submodule(name).weight), name


@pytest.mark.parametrize("argv,words", [
    (["--format", "onnx", "-o", "{t}/o"], ["unknown export format 'onnx'", "gguf"]),
    (["--format", "gguf", "-o", "{t}/o"], ["must end in .gguf", "-o NAME.gguf"]),
    (["--format", "gguf", "--gguf-type", "Q9_X", "-o", "{t}/o.gguf"], ["Q9_X", "Q4_K_M"]),
    (["--format", "gguf", "--bits", "4", "-o", "{t}/o.gguf"], ["do not apply to GGUF", "--gguf-type"]),
    (["--format", "gptq", "--gguf-type", "Q8_0", "-o", "{t}/o"], ["--gguf-type applies to --format gguf only"]),
    (["--format", "gptq", "-o", "{t}/o.gguf"], ["ends in .gguf", "--format gguf"]),
    (["--format", "awq", "--bits", "3", "-o", "{t}/o"], ["AWQ GEMM holds 4-bit codes only", "--bits 4"]),
    (["--format", "gptq", "--bits", "9", "-o", "{t}/o"], ["bits=9"]),
    (["--format", "gptq", "-o", "{t}/exists"], ["already exists", "--overwrite"]),
])
def test_export_bad_input(dirs, tmp_path, capsys, argv, words):
    (tmp_path / "exists").mkdir()
    code, _, err = run(["export", str(dirs / "float"), *[a.format(t=tmp_path) for a in argv]], capsys)
    one_line_error(code, err, *words)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.gguf").exists()
