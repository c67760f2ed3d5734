"""GPTQ v1 and AWQ GEMM checkpoints: decoded by an independent numpy reader written from
the documented layouts, read back exactly by lowbit, loaded into identical logits."""
import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from lowbit.errors import LowbitError
from lowbit.io import awq_gemm, gptq_v1
from lowbit.io.checkpoint import save_quantized
from lowbit.io.load import load_model
from lowbit.pipeline import quantize_model
from lowbit.spec import QuantSpec
from tiny import VOCAB, tiny_model

# AWQ needs out % 8 == 0; the tiny model's k/v projections are 36 wide
AWQ_IGNORE = ("lm_head", "re:.*[.][kv]_proj")


def _stored_scales(model, tensors):
    """Scales are fp16 on disk: round them in memory too, so that the in-memory model is
    exactly what the files hold (the quantizer works in fp32)."""
    modules = dict(model.named_modules())
    for name, qt in tensors.items():
        qt.scale = qt.scale.half().float()
        modules[name].weight.data.copy_(qt.dequantize())


def _write(tmp_path, tokenizer, spec, fmt, calib=None, fit=True):
    model = tiny_model("llama", vocab=VOCAB)
    writer = {"gptq": gptq_v1, "gptq-v2": gptq_v1, "awq": awq_gemm}[fmt]
    result = quantize_model(model, spec, calib, fit_layout=writer.fit_layout if fit else None)
    _stored_scales(model, result.tensors)
    out = tmp_path / fmt
    save_quantized(out, model, tokenizer, result.tensors, {"base_model": "tiny"}, fmt=fmt)
    return out, model, result


def _bits_at(words: np.ndarray, offset: int, nbits: int) -> np.ndarray:
    """Value of the nbits starting at bit `offset` of a little-endian stream of uint32
    words laid out along axis 0 (one stream per column), read one bit at a time."""
    value = np.zeros(words.shape[1:], dtype=np.int64)
    for k in range(nbits):
        pos = offset + k
        bit = (words[pos // 32].astype(np.int64) >> (pos % 32)) & 1
        value |= bit << k
    return value


def numpy_gptq_weight(st: dict, name: str, bits: int, offset: int = 1) -> np.ndarray:
    """w[o, i] = scales[g, o] * (q[i, o] - (qzeros field[g, o] + 1) mod 2**b), g = g_idx[i]
    (v1; v2 stores the zero point itself: offset 0)."""
    qweight = st[f"{name}.qweight"].view(np.uint32)  # (words down the input axis, out)
    qzeros = st[f"{name}.qzeros"].view(np.uint32).T  # (words along the output axis, groups)
    scales = st[f"{name}.scales"].astype(np.float64)  # (groups, out)
    g_idx = st[f"{name}.g_idx"].astype(np.int64)
    inp, (ngroups, out) = len(g_idx), scales.shape
    assert qweight.shape == (-(-inp * bits // 32), out) and qweight.dtype == np.uint32
    assert qzeros.shape == (-(-out * bits // 32), ngroups) and st[f"{name}.scales"].dtype == np.float16
    q = np.stack([_bits_at(qweight, i * bits, bits) for i in range(inp)])  # (in, out)
    zeros = np.stack([(_bits_at(qzeros, o * bits, bits) + offset) % 2**bits for o in range(out)], axis=1)
    return ((q - zeros[g_idx]) * scales[g_idx]).T  # (out, in)


AWQ_NIBBLE_OF_COLUMN = [0, 4, 1, 5, 2, 6, 3, 7]  # column j of each 8 sits in nibble [j]


def numpy_awq_weight(st: dict, name: str, group: int) -> np.ndarray:
    def unpack(words):  # (rows, out / 8) -> (rows, out)
        words = words.view(np.uint32)
        cols = []
        for j in range(words.shape[1] * 8):
            w = words[:, j // 8][None]  # one stream per row
            cols.append(_bits_at(w, 4 * AWQ_NIBBLE_OF_COLUMN[j % 8], 4))
        return np.stack(cols, axis=1)
    q = unpack(st[f"{name}.qweight"])  # (in, out)
    zeros = unpack(st[f"{name}.qzeros"])  # (groups, out)
    scales = st[f"{name}.scales"].astype(np.float64)
    inp = q.shape[0]
    g = np.arange(inp) // (group if group > 0 else inp)
    assert scales.shape[0] == g[-1] + 1
    return ((q - zeros[g]) * scales[g]).T


GPTQ_SPECS = [QuantSpec(bits=b, group_size=g, symmetric=s)
              for b, g, s in [(2, 32, False), (3, 32, True), (3, -1, False), (4, 32, True), (4, 32, False),
                              (4, -1, True), (8, 64, False), (8, -1, True), (2, -1, True)]]


def _assert_same_grid_and_codes(back, qt):
    for field in ("q", "zero", "scale", "g_idx"):
        assert torch.equal(getattr(back, field), getattr(qt, field).to(getattr(back, field).dtype)), field


@pytest.mark.parametrize("spec", GPTQ_SPECS, ids=lambda s: f"w{s.bits}g{s.group_size}{'s' if s.symmetric else 'a'}")
def test_gptq_independent_decoder_and_round_trip(tmp_path, default_tokenizer, spec):
    out, model, result = _write(tmp_path, default_tokenizer, spec, "gptq")
    st = load_file(str(out / "model.safetensors"))
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    read, _ = gptq_v1.read_tensors(out, qcfg)
    for name, qt in result.tensors.items():
        ref = numpy_gptq_weight(st, name, spec.bits)
        np.testing.assert_allclose(ref, qt.dequantize().double().numpy(), rtol=1e-6, atol=1e-7)
        back = read[name]
        _assert_same_grid_and_codes(back, qt)
        assert (back.bits, back.group_size, back.symmetric, back.act_order) == \
               (qt.bits, qt.group_size, qt.symmetric, qt.act_order)


def test_gptq_act_order_g_idx(tmp_path, default_tokenizer):
    """act-order without static groups: a permuted per-column g_idx, stored and honoured."""
    calib = torch.randint(0, VOCAB, (8, 32), generator=torch.Generator().manual_seed(0))
    spec = QuantSpec(method="gptq", bits=4, group_size=32, symmetric=False,
                     method_args={"act_order": True, "static_groups": False})
    out, model, result = _write(tmp_path, default_tokenizer, spec, "gptq", calib)
    assert not result.layout_changes and all(qt.act_order for qt in result.tensors.values())
    st = load_file(str(out / "model.safetensors"))
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qcfg["desc_act"] is True
    loaded = load_model(str(out))
    for name, qt in result.tensors.items():
        np.testing.assert_array_equal(st[f"{name}.g_idx"], qt.g_idx.numpy())
        assert not np.array_equal(st[f"{name}.g_idx"], np.arange(qt.shape[1]) // 32)
        np.testing.assert_allclose(numpy_gptq_weight(st, name, 4), qt.dequantize().double().numpy(),
                                   rtol=1e-6, atol=1e-7)
        assert loaded.quantized[name].act_order and torch.equal(loaded.quantized[name].g_idx, qt.g_idx)


@pytest.mark.parametrize("spec", [QuantSpec(bits=4, group_size=24, ignore=AWQ_IGNORE),
                                  QuantSpec(bits=4, group_size=64, symmetric=False, ignore=AWQ_IGNORE),
                                  QuantSpec(bits=4, group_size=-1, symmetric=False, ignore=AWQ_IGNORE)],
                         ids=["g24s", "g64a", "channel-a"])
def test_awq_independent_decoder_and_round_trip(tmp_path, default_tokenizer, spec):
    out, model, result = _write(tmp_path, default_tokenizer, spec, "awq")
    st = load_file(str(out / "model.safetensors"))
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    read, _ = awq_gemm.read_tensors(out, qcfg)
    for name, qt in result.tensors.items():
        ref = numpy_awq_weight(st, name, qt.group_size)
        np.testing.assert_allclose(ref, qt.dequantize().double().numpy(), rtol=1e-6, atol=1e-7)
        back = read[name]
        _assert_same_grid_and_codes(back, qt)
        assert (back.bits, back.group_size, back.symmetric) == (4, qt.group_size, qt.symmetric)
    if spec.symmetric:  # AWQ stores a symmetric grid with zero point 8
        zeros = st["model.layers.0.mlp.up_proj.qzeros"].view(np.uint32)
        assert (zeros == 0x88888888).all()
    assert not any(k.startswith("model.layers.0.self_attn.k_proj.q") for k in st)


@pytest.mark.parametrize("fmt,spec", [
    ("gptq", QuantSpec(bits=4, group_size=32)),
    ("gptq", QuantSpec(bits=3, group_size=-1, symmetric=False)),
    ("awq", QuantSpec(bits=4, group_size=32, symmetric=False, ignore=AWQ_IGNORE))], ids=["gptq-w4g32", "gptq-w3a", "awq"])
def test_lowbit_loads_identical_logits(tmp_path, default_tokenizer, fmt, spec):
    out, model, result = _write(tmp_path, default_tokenizer, spec, fmt)
    loaded = load_model(str(out))
    assert loaded.kind == "quantized" and loaded.meta["format"] == fmt
    ids = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_gptq_config_fields_and_transformers_accepts_them(tmp_path, default_tokenizer):
    from transformers import GPTQConfig
    spec = QuantSpec(bits=4, group_size=32, symmetric=False, overrides=(("re:.*down_proj", {"bits": 8}),),
                     ignore=("lm_head", "model.layers.1.self_attn.o_proj"))
    out, model, result = _write(tmp_path, default_tokenizer, spec, "gptq")
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert {k: q[k] for k in ("quant_method", "bits", "group_size", "desc_act", "sym", "checkpoint_format")} == \
        {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False, "sym": False,
         "checkpoint_format": "gptq"}
    assert q["true_sequential"] is True and 0 < q["damp_percent"] < 1 and "static_groups" in q
    assert q["dynamic"] == {
        "+:^model\\.layers\\.0\\.mlp\\.down_proj$": {"bits": 8, "group_size": 32, "sym": False, "desc_act": False},
        "+:^model\\.layers\\.1\\.mlp\\.down_proj$": {"bits": 8, "group_size": 32, "sym": False, "desc_act": False},
        "-:^model\\.layers\\.1\\.self_attn\\.o_proj$": {}}
    assert GPTQConfig.from_dict(q).bits == 4
    loaded = load_model(str(out))  # per-module bits come back through "dynamic"
    assert loaded.quantized["model.layers.0.mlp.down_proj"].bits == 8
    assert "model.layers.1.self_attn.o_proj" not in loaded.quantized
    ids = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_awq_config_fields_and_transformers_accepts_them(tmp_path, default_tokenizer):
    from transformers import AwqConfig
    out, model, result = _write(tmp_path, default_tokenizer, QuantSpec(bits=4, group_size=32, ignore=AWQ_IGNORE), "awq")
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    # 72-wide rows in groups of 32 cannot be stored: the largest divisor <= 32 is used, and
    # as most rows are 72 wide that is the model's group size; 128-wide rows keep 32
    assert {k: q[k] for k in ("quant_method", "version", "zero_point", "w_bit", "q_group_size", "bits", "group_size")} \
        == {"quant_method": "awq", "version": "gemm", "zero_point": True, "w_bit": 4, "q_group_size": 24,
            "bits": 4, "group_size": 24}
    assert result.layout_changes["model.layers.0.self_attn.q_proj"] == {"requested": 32, "used": 24}
    assert {k: v for k, v in q["dynamic"].items() if k.startswith("+:")} == \
        {f"+:^model\\.layers\\.{i}\\.mlp\\.down_proj$": {"group_size": 32} for i in (0, 1)}
    assert q["dynamic"]["-:^model\\.layers\\.1\\.self_attn\\.v_proj$"] == {}
    assert "model.layers.0.self_attn.k_proj" in q["modules_to_not_convert"]
    loaded = load_model(str(out))
    assert loaded.quantized["model.layers.1.mlp.down_proj"].group_size == 32
    # transformers 4.57 wants autoawq installed to honour modules_to_not_convert; a model
    # with only lm_head left in float writes none
    cfg = AwqConfig.from_dict({**q, "modules_to_not_convert": None})
    assert (cfg.bits, cfg.group_size, cfg.zero_point) == (4, 24, True)
    assert awq_gemm.quantization_config({}, ["lm_head"])["modules_to_not_convert"] is None


def test_fit_layout_maps_or_refuses_clearly():
    spec = QuantSpec(bits=4, group_size=0)
    assert gptq_v1.fit_layout("x", spec, (64, 72)).group_size == -1  # no per-tensor grid in GPTQ
    assert gptq_v1.fit_layout("x", QuantSpec(bits=4, group_size=128), (64, 576)).group_size == 128  # partial groups ok
    with pytest.raises(LowbitError, match="2, 3, 4 or 8"):
        gptq_v1.fit_layout("x", QuantSpec(bits=5), (64, 64))
    with pytest.raises(LowbitError, match="4-bit"):
        awq_gemm.fit_layout("x", QuantSpec(bits=3), (64, 64))
    with pytest.raises(LowbitError, match="ignore"):
        awq_gemm.fit_layout("k", QuantSpec(bits=4), (36, 64))
    assert awq_gemm.fit_layout("x", QuantSpec(bits=4, group_size=128), (64, 576)).group_size == 64
    assert awq_gemm.fit_layout("x", spec, (64, 72)).group_size == -1
    fitted = awq_gemm.fit_layout("x", QuantSpec(bits=4, group_size=32, method="gptq",
                                                method_args={"act_order": True, "static_groups": False}), (64, 64))
    assert fitted.method_args["static_groups"] is True  # AWQ has no g_idx


def test_gptq_per_tensor_codes_are_stored_as_equal_channels(tmp_path):
    """Written without fit_layout, a per-tensor grid still round-trips (as per channel)."""
    from lowbit.formats import quantize_rtn
    qt = quantize_rtn(torch.randn(40, 64), 4, symmetric=False, group_size=0)
    packed = gptq_v1.pack_tensor("m", qt, torch.float32)
    back = gptq_v1.unpack_tensor("m", {k.split(".")[-1]: v for k, v in packed.items()},
                                 {"bits": 4, "group_size": -1, "sym": False}, 1)
    torch.testing.assert_close(back.dequantize(), qt.dequantize(), rtol=1e-3, atol=0)
    assert torch.equal(back.q, qt.q)


@pytest.mark.parametrize("spec", [QuantSpec(bits=4, group_size=32, symmetric=False),
                                  QuantSpec(bits=3, group_size=-1, symmetric=False)], ids=["w4g32a", "w3a"])
def test_gptq_v2_stores_the_zero_point_itself(tmp_path, default_tokenizer, spec):
    """gptq-v2: the same files with qzeros = zero (GPTQModel loads asymmetric v2 from anyone)."""
    out, model, result = _write(tmp_path, default_tokenizer, spec, "gptq-v2")
    st = load_file(str(out / "model.safetensors"))
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["checkpoint_format"] == "gptq_v2" and q["sym"] is False
    for name, qt in result.tensors.items():
        np.testing.assert_allclose(numpy_gptq_weight(st, name, spec.bits, offset=0),
                                   qt.dequantize().double().numpy(), rtol=1e-6, atol=1e-7)
    loaded = load_model(str(out))
    assert loaded.meta["format"] == "gptq-v2"
    ids = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, model(ids).logits, rtol=0, atol=0)


GPTQMODEL_PYTHON = Path(os.environ.get("LOWBIT_GPTQMODEL_PYTHON", "/work/peers/venv-gptqmodel/bin/python"))
PEER_SCRIPT = """
import os, sys, torch
from gptqmodel import GPTQModel
from safetensors.torch import load_file, save_file
ids, out = load_file(sys.argv[1])["ids"], {}
for d in sys.argv[3:]:
    model = GPTQModel.load(d, device="cpu", dtype=torch.float16, backend="torch").model
    with torch.no_grad():
        out[os.path.basename(d)] = model(ids).logits.float().contiguous()
save_file(out, sys.argv[2])
"""


@pytest.mark.skipif(not GPTQMODEL_PYTHON.is_file(), reason="no GPTQModel venv (LOWBIT_GPTQMODEL_PYTHON)")
def test_gptqmodel_loads_the_files(tmp_path, default_tokenizer):
    """GPTQModel (its own venv and torch) loads lowbit's GPTQ v1 and AWQ files of the tiny model,
    partial groups and float Linears included, into the same logits (fp16 compute)."""
    from safetensors.torch import load_file, save_file
    cases = {"gptq": QuantSpec(bits=4, group_size=32), "gptq-v2": QuantSpec(bits=4, group_size=32, symmetric=False),
             "awq": QuantSpec(bits=4, group_size=-1, symmetric=False, ignore=AWQ_IGNORE)}
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(0))
    ref = {}
    for fmt, spec in cases.items():
        out, model, _ = _write(tmp_path, default_tokenizer, spec, fmt)
        with torch.no_grad():
            ref[out.name] = model(ids).logits
    save_file({"ids": ids}, str(tmp_path / "ids.safetensors"))
    env = {**os.environ, "GPTQMODEL_CPU_WORKERS": "2", "CUDA_VISIBLE_DEVICES": "", "GPTQMODEL_OFFLINE": "1"}
    subprocess.run([str(GPTQMODEL_PYTHON), "-c", PEER_SCRIPT, str(tmp_path / "ids.safetensors"),
                    str(tmp_path / "peer.safetensors"), *[str(tmp_path / f) for f in cases]],
                   check=True, env=env, timeout=600, capture_output=True)
    peer = load_file(str(tmp_path / "peer.safetensors"))
    for name, want in ref.items():
        got = peer[name]
        # fp16 compute against lowbit's fp32: 1e-4 measured (of logits up to 0.12); one
        # wrong zero point or code order would move them by whole grid steps
        assert (got - want).abs().max() < 1e-2 * want.abs().max(), name
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.95, name


@pytest.mark.parametrize("fmt,spec", [
    ("gptq", QuantSpec(bits=4, group_size=32, symmetric=False, clip="mse")),
    ("gptq", QuantSpec(method="gptq", bits=4, group_size=32, clip="minmax",
                       method_args={"act_order": True, "static_groups": False})),
    ("awq", QuantSpec(method="gptq", bits=4, group_size=32, symmetric=False, ignore=AWQ_IGNORE))],
    ids=["rtn-mse-gptq-w4g32a", "gptq-w4g32-dynamic", "gptq-awq-w4g32a"])
def test_walk_rounds_scales_to_the_stored_fp16(tmp_path, default_tokenizer, fmt, spec):
    """The format declares fp16 scales (CheckpointFormat.scale_dtype); the walk fits its grids in
    fp16 before choosing codes, so the file reloads to exactly the weights the walk propagated
    (no rounding of scales after the fact, as _stored_scales does for the older tests); the MSE
    clipping search (RTN case) compares candidates on rounded scales."""
    from lowbit import api
    from lowbit.io.formats import get_format
    from lowbit.io.load import Loaded

    calib = tmp_path / "calib.txt"
    calib.write_text("The river rises in the northern hills and flows south to the sea. " * 40)
    model = tiny_model("llama", vocab=VOCAB)
    out = tmp_path / fmt
    summary = api.quantize(Loaded(model, default_tokenizer, "tiny", "hf"), spec, out, calib=calib,
                           nsamples=4, seqlen=32, format=fmt)
    back = load_model(str(out))
    walked = dict(model.named_modules())
    assert set(back.quantized) == set(summary["loaded"].quantized) and back.quantized
    for name, qt in back.quantized.items():
        assert torch.equal(walked[name].weight, back.model.get_submodule(name).weight), name
        assert torch.equal(qt.scale, qt.scale.half().float())
    assert get_format(fmt).fit("x", spec, (64, 64)).scale_dtype == "float16"
    assert get_format("compressed-tensors").fit("x", spec, (64, 64)).scale_dtype is None
    # without the format's scale dtype the fp32 grid does not survive the file
    control = tiny_model("llama", vocab=VOCAB)
    result = quantize_model(control, replace(spec, method="rtn", clip="minmax"), fit_layout=get_format(fmt).fit_layout)
    assert any(not torch.equal(qt.scale, qt.scale.half().float()) for qt in result.tensors.values())
