"""GPTQ on GGML block grids (methods/ggml_grid.py) and the GGUF path of quantize (pipeline/gguf.py).

Oracles: gguf-py's quants.dequantize decodes every block; the error of llama.cpp's own
rounding is that of ggml_blocks.quantize (byte-identical to llama.cpp, tests/test_ggml_blocks.py).
"""
import json

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

import lowbit
from lowbit.errors import LowbitError
from lowbit.formats import ggml_blocks
from lowbit.io.gguf_mixes import plan_types
from lowbit.io.gguf_reader import open_gguf, read_gguf
from lowbit.io.load import Loaded
from lowbit.methods.gptq import gptq_ggml
from lowbit.spec import QuantSpec
from clitools import PROSE, run
from peers import needs_llamacpp, run_peer
from tiny import tiny_llm


def correlated_problem(rows=64, cols=512, n=2048, seed=0):
    """W (rows, cols) and H = 2 X^T X / n for inputs with correlated columns of unequal scale."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols) + 2 * torch.randn(cols, cols, generator=g) / cols ** 0.5
    X = (torch.randn(n, cols, generator=g) @ mix) * torch.linspace(0.2, 3, cols)[torch.randperm(cols, generator=g)]
    return torch.randn(rows, cols, generator=g) * 0.05, 2 * X.T @ X / n


def output_error(Q, W, H) -> float:
    """tr(dW H dW^T): the layer's squared output error on the calibration inputs (x2)."""
    d = torch.as_tensor(np.asarray(Q), dtype=torch.float64) - W.double()
    return float(torch.trace(d @ H.double() @ d.T))


def decoded(blocks, qtype, shape):
    return gguf.quants.dequantize(blocks, qtype).reshape(shape)


@pytest.mark.parametrize("qtype", [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q4_0, T.Q5_0, T.Q5_1, T.Q8_0])
def test_gptq_on_block_grid_beats_llamacpp_rounding(qtype):
    """Lower output error than llama.cpp's rounding, with and without an importance vector, on the
    same block type; and the bytes decode to exactly the weights the walk would propagate."""
    W, H = correlated_problem()
    imp = (torch.diag(H) / 2).numpy()
    plain = output_error(decoded(ggml_blocks.quantize(W.numpy(), qtype), qtype, W.shape), W, H)
    weighted = output_error(decoded(ggml_blocks.quantize(W.numpy(), qtype, imp), qtype, W.shape), W, H)
    for order in ("group", "none", "static"):
        q = gptq_ggml(W, H, qtype, order=order)
        assert q.blocks.shape == (W.shape[0], gguf.quants.quant_shape_to_byte_shape(W.shape, qtype)[1])
        back = decoded(q.blocks, qtype, W.shape)
        assert np.array_equal(back, q.values.numpy()), order  # bit for bit
        err = output_error(back, W, H)
        assert err < 0.75 * plain and err < 0.8 * weighted, (order, err, plain, weighted)  # measured 0.35-0.6


def test_auto_order_is_static_on_32_blocks_and_group_on_k_quants():
    W, H = correlated_problem(rows=16)
    for qtype, same in ((T.Q8_0, "static"), (T.Q4_0, "static"), (T.Q4_K, "group"), (T.Q2_K, "group")):
        auto, named = gptq_ggml(W, H, qtype), gptq_ggml(W, H, qtype, order=same)
        assert np.array_equal(auto.blocks, named.blocks), qtype
    assert not np.array_equal(gptq_ggml(W, H, T.Q8_0).blocks, gptq_ggml(W, H, T.Q8_0, order="group").blocks)


def test_dead_inputs_and_float_types():
    W, H = correlated_problem(rows=8, cols=256, n=512)
    H[:, 5] = H[5, :] = 0  # an input that was always zero
    q = gptq_ggml(W, H, T.Q4_K)
    assert np.isfinite(q.values.numpy()).all()
    assert np.array_equal(decoded(q.blocks, T.Q4_K, W.shape), q.values.numpy())
    f16 = gptq_ggml(W, H, T.F16)
    assert torch.equal(f16.values, W.half().float())


def round_like_llamacpp(W: torch.Tensor, qtype) -> np.ndarray:
    return decoded(ggml_blocks.quantize(W.numpy(), qtype), qtype, W.shape)


def _tiny_loaded(tok, hidden=256):
    return Loaded(tiny_llm("llama", hidden=hidden, vocab=len(tok)), tok, "tiny", "hf")


def test_gguf_file_holds_the_propagated_model(tmp_path, tiny_tok):
    """Every tensor of the written file decodes (gguf-py) to the weights the walk left in the model
    it returns, with llama.cpp's types per tensor; GPTQ chose other codes than llama.cpp's rounding."""
    text = tmp_path / "prose.txt"
    text.write_text(PROSE)
    files = {}
    for method in ("gptq", "rtn"):
        out = tmp_path / f"{method}.gguf"
        s = lowbit.quantize(_tiny_loaded(tiny_tok), QuantSpec(method=method), out, format="gguf",
                            gguf_type="Q3_K_M", calib=text, nsamples=4, seqlen=64)
        assert s["quantized_modules"] == 14 and s["gguf_type"] == "Q3_K_M"
        back, _ = read_gguf(out, with_tokenizer=False)
        mine, theirs = s["loaded"].model.state_dict(), back.state_dict()
        assert set(mine) == set(theirs)
        for name in theirs:
            assert torch.equal(mine[name], theirs[name]), name
        plan = plan_types(s["loaded"].model, "Q3_K_M")
        got = {t.name: t.tensor_type for t in open_gguf(out).tensors}
        assert sorted(got.values()) == sorted(plan.values())
        files[method] = {t.name: np.asarray(t.data).tobytes() for t in open_gguf(out).tensors}
    differ = [n for n in files["rtn"] if files["rtn"][n] != files["gptq"][n]]
    assert any(".attn_q." in n for n in differ) and any(".ffn_down." in n for n in differ), differ
    assert "token_embd.weight" in differ  # tied to the output: GPTQ with the final hidden states


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_output_matrix_gets_gptq_from_final_hidden_states(tmp_path, tiny_tok, family):
    """The logits' matrix (token_embd tied to it, or an untied output.weight) is solved by GPTQ
    on its block grid with H from the final norm's outputs: its output error on those inputs
    is below llama.cpp's rounding, which head_gptq=False keeps byte for byte."""
    text = tmp_path / "prose.txt"
    text.write_text(PROSE)
    head_tensor = "token_embd.weight" if family == "llama" else "output.weight"
    float_model = tiny_llm(family, hidden=256, vocab=len(tiny_tok))
    W = float_model.get_output_embeddings().weight.detach().clone()
    files, models = {}, {}
    for head_gptq in (True, False):
        out = tmp_path / f"{head_gptq}.gguf"
        s = lowbit.quantize(Loaded(tiny_llm(family, hidden=256, vocab=len(tiny_tok)), tiny_tok, "tiny", "hf"),
                            QuantSpec(method="gptq", method_args={"head_gptq": head_gptq}), out, format="gguf",
                            gguf_type="Q4_K_M", calib=text, nsamples=4, seqlen=64)
        t = next(t for t in open_gguf(out).tensors if t.name == head_tensor)
        files[head_gptq] = decoded(np.asarray(t.data), t.tensor_type, W.shape)
        models[head_gptq] = s["loaded"].model
    rtn = round_like_llamacpp(W, t.tensor_type)
    assert np.array_equal(files[False], rtn)
    ids = tiny_tok(PROSE)["input_ids"][:256]
    with torch.no_grad():  # the head's inputs in the quantized model, as the walk saw them
        x = models[True].model(torch.tensor([ids])).last_hidden_state[0]
    H = 2 * x.T.double() @ x.double() / x.shape[0]
    gptq_err, rtn_err = output_error(files[True], W, H), output_error(files[False], W, H)
    assert gptq_err < 0.8 * rtn_err, (gptq_err, rtn_err)
    assert torch.equal(models[True].get_output_embeddings().weight, torch.from_numpy(files[True]))


def test_cli_writes_gguf_and_refuses_bad_types(capsys, tmp_path, default_tokenizer):
    d = tmp_path / "tiny256"
    tiny_llm("llama", hidden=256, vocab=len(default_tokenizer)).save_pretrained(d)
    default_tokenizer.save_pretrained(d)
    text = tmp_path / "prose.txt"
    text.write_text(PROSE)
    out = tmp_path / "m.gguf"
    code, stdout, err = run(["quantize", str(d), "-o", str(out), "--format", "gguf", "--gguf-type", "q4_k_m",
                             "--method", "gptq", "--calib", str(text), "--nsamples", "4", "--seqlen", "64",
                             "--no-eval", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["out"] == str(out) and summary["tensor_types"]["Q6_K"] == 3
    model, _ = read_gguf(out)
    assert model.config.hidden_size == 256
    code, _, err = run(["quantize", str(d), "-o", str(out), "--format", "gguf", "--no-eval"], capsys)
    assert code == 2 and "already exists" in err
    for args, word in ((["--format", "gguf", "--gguf-type", "Q9_K"], "Q9_K"),
                       (["--format", "gguf", "--method", "gptq", "--smooth", "yes"], "smooth must be one of"),
                       (["--format", "gptq", "--gguf-type", "Q4_K_M"], "--format gguf")):
        code, _, err = run(["quantize", str(d), "-o", str(tmp_path / "x.gguf"), *args, "--no-eval"], capsys)
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and word in lines[0], err
    assert not (tmp_path / "x.gguf").exists()


def _llamacpp_vs_dequantized(gguf, model, float_model, tiny_tok, tmp_path):
    """Mean |logit| differences on one text: (llama.cpp running the file vs lowbit's dequantized
    model, the mean |logit| of the latter, the dequantized model vs the float one)."""
    ids = tiny_tok("The river rises in the northern hills and flows south. " * 3)["input_ids"]
    run_peer({"op": "logits", "model": str(gguf), "windows": [ids], "out": str(tmp_path / "lg")})
    got = np.load(tmp_path / "lg.0.npy")
    with torch.no_grad():
        deq = model(torch.tensor([ids])).logits[0].numpy()
        flt = float_model(torch.tensor([ids])).logits[0].numpy()
    return np.abs(got - deq).mean(), np.abs(deq).mean(), np.abs(deq - flt).mean()


@needs_llamacpp
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_llamacpp_runs_gptq_gguf(tmp_path, tiny_tok, method):
    """llama.cpp's logits on a lowbit GPTQ file match lowbit's dequantized model as closely as on
    files of llama.cpp's own rounding (tests/test_gguf.py: 3 % of mean |logit|, and at most half
    the distance between the dequantized and the float model). Q2_K: at Q4_K_M, GPTQ (with the tied
    output matrix solved too) leaves this tiny model 0.0008 from the float one in mean |logit|, only
    twice the noise of llama.cpp's own 8-bit rounding of activations (0.0004), so that bound could not
    tell the dequantized model from the float one. AWQ: its scales folded into the norms and the
    weights before llama.cpp's rounding, the file judged the same way."""
    text = tmp_path / "prose.txt"
    text.write_text(PROSE)
    loaded = _tiny_loaded(tiny_tok)
    float_model = tiny_llm("llama", hidden=256, vocab=len(tiny_tok))
    out = tmp_path / "m.gguf"
    s = lowbit.quantize(loaded, QuantSpec(method=method), out, format="gguf", gguf_type="Q2_K", calib=text,
                        nsamples=4, seqlen=64)
    assert s["smoothing"] or method != "awq"  # AWQ's scales were chosen and folded
    err, deq, flt = _llamacpp_vs_dequantized(out, s["loaded"].model, float_model, tiny_tok, tmp_path)
    assert err <= 0.03 * deq, (err, deq)
    assert err <= 0.5 * flt, (err, flt)


@needs_llamacpp
def test_llamacpp_judges_smoothed_q8_0_closer_to_the_float_model(tmp_path, tiny_tok):
    """Smoothing (method_args smooth, default auto) is searched against llama.cpp's rounding of
    weights and of input rows. On a model with outlier input channels (planted by an exact
    rescaling), llama.cpp's own logits on the smoothed Q8_0 file are at least 2x closer to the
    float model's than on the file without smoothing, and the file's norms carry the scales."""
    from tiny import plant_outliers

    text = tmp_path / "prose.txt"
    text.write_text(PROSE)
    ids = tiny_tok("The river rises in the northern hills and flows south. " * 3)["input_ids"]
    with torch.no_grad():
        flt = plant_outliers(tiny_llm("llama", vocab=len(tiny_tok)), factor=100)(torch.tensor([ids])).logits[0].numpy()
    err, summaries = {}, {}
    for smooth in ("auto", "off"):
        out = tmp_path / f"{smooth}.gguf"
        model = plant_outliers(tiny_llm("llama", vocab=len(tiny_tok)), factor=100)
        summaries[smooth] = lowbit.quantize(Loaded(model, tiny_tok, "tiny", "hf"),
                                            QuantSpec(method="gptq", method_args={"smooth": smooth}), out,
                                            format="gguf", gguf_type="Q8_0", calib=text, nsamples=8, seqlen=64)
        run_peer({"op": "logits", "model": str(out), "windows": [ids], "out": str(tmp_path / smooth)})
        err[smooth] = np.abs(np.load(tmp_path / f"{smooth}.0.npy") - flt).mean()
    assert err["auto"] < 0.5 * err["off"], err
    assert summaries["off"]["smoothing"] == {}
    chosen = summaries["auto"]["smoothing"]["model.layers.0"]
    assert "input_layernorm" in chosen and "mlp.up_proj" in chosen, chosen
    norms = {t.name: np.asarray(t.data) for t in open_gguf(tmp_path / "auto.gguf").tensors if "norm" in t.name}
    model = summaries["auto"]["loaded"].model
    np.testing.assert_array_equal(norms["blk.0.attn_norm.weight"], model.model.layers[0].input_layernorm.weight.detach().numpy())


def test_unknown_smooth_value_is_refused(tmp_path, tiny_tok):
    with pytest.raises(LowbitError, match="smooth='yes' for method 'gptq' must be one of auto, on, off"):
        lowbit.quantize(_tiny_loaded(tiny_tok), QuantSpec(method="gptq", method_args={"smooth": "yes"}),
                        tmp_path / "x.gguf", format="gguf", gguf_type="Q8_0", calib=None)
    assert not (tmp_path / "x.gguf").exists()


def test_smoothing_is_skipped_on_a_half_precision_model(caplog):
    """Half-precision norms could not hold the scales exactly: the GGUF walk then skips smoothing
    (with a warning) rather than write a file whose float function changed."""
    from lowbit.pipeline.gguf import gguf_smoothing

    model = tiny_llm("llama")
    plan = plan_types(model, "Q8_0")
    calibration = torch.zeros(1, 4, dtype=torch.long)
    assert gguf_smoothing(model, QuantSpec(method="gptq"), plan, calibration) is not None
    assert gguf_smoothing(model, QuantSpec(method="gptq", method_args={"smooth": "off"}), plan, calibration) is None
    assert gguf_smoothing(model.to(torch.bfloat16), QuantSpec(method="gptq"), plan, calibration) is None
    assert "load it in float32" in caplog.text


@needs_llamacpp
@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_llamacpp_runs_mxfp4_gguf(tmp_path, tiny_tok, method):
    """GGUF type MXFP4 (39) for every Linear, the output matrix Q8_0: llama.cpp loads and runs the
    file, and its logits match lowbit's dequantized model as on the other types."""
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader

    text = tmp_path / "prose.txt"
    text.write_text(PROSE)
    loaded = _tiny_loaded(tiny_tok)
    float_model = tiny_llm("llama", hidden=256, vocab=len(tiny_tok))
    out = tmp_path / "m.gguf"
    s = lowbit.quantize(loaded, QuantSpec(method=method), out, format="gguf", gguf_type="MXFP4", calib=text,
                        nsamples=4, seqlen=64)
    types = {t.name: T(t.tensor_type) for t in GGUFReader(str(out)).tensors}
    assert types["blk.0.attn_q.weight"] == T.MXFP4 and types["blk.1.ffn_down.weight"] == T.MXFP4
    assert types["token_embd.weight"] == T.Q8_0
    err, deq, flt = _llamacpp_vs_dequantized(out, s["loaded"].model, float_model, tiny_tok, tmp_path)
    print(method, "llama.cpp vs dequantized", err, "dequantized vs float", flt)
    assert err <= 0.03 * deq, (err, deq)
    assert err <= 0.5 * flt, (err, flt)
