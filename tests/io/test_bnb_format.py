"""bitsandbytes 4-bit (NF4) checkpoints: transformers + bitsandbytes load lowbit's file on CPU,
its logits equal lowbit's dequantized model, and an RTN file holds the same bytes as
bitsandbytes quantizing the float model itself."""
import json

import pytest
import torch

import lowbit
from lowbit.errors import LowbitError
from lowbit.io.load import load_model
from lowbit.spec import preset
from clitools import one_line_error, run
from tiny import tiny_llm

pytest.importorskip("bitsandbytes", reason="bitsandbytes (a test dependency) is not installed")
LINEAR4 = ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "model.layers.0.self_attn.k_proj")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("bnb")
    tiny_llm("llama", hidden=128, vocab=256).save_pretrained(root / "float")  # rows of 32k: bnb's CPU kernel
    lowbit.quantize(str(root / "float"), preset("nf4"), root / "nf4", format="bnb")
    return root


def _hf(path, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, device_map="cpu", **kw).eval()


def test_transformers_loads_it_with_equal_logits(pair):
    import bitsandbytes as bnb

    theirs = _hf(pair / "nf4")
    assert isinstance(theirs.get_submodule(LINEAR4[0]), bnb.nn.Linear4bit)
    for m in theirs.modules():  # bitsandbytes' float32 path (its AVX-512 BF16 kernel rounds inputs to bf16)
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
    ours = load_model(str(pair / "nf4"))
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours.model(ids).logits, theirs(ids).logits
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_rtn_file_equals_bitsandbytes_quantizing_the_float_model(pair):
    from transformers import BitsAndBytesConfig

    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    ref, ours = _hf(pair / "float", quantization_config=cfg), _hf(pair / "nf4")
    for name in LINEAR4:
        a, b = ours.get_submodule(name).weight, ref.get_submodule(name).weight
        assert torch.equal(a.data, b.data), name
        assert torch.equal(a.quant_state.absmax, b.quant_state.absmax), name
        assert torch.equal(a.quant_state.state2.absmax, b.quant_state.state2.absmax), name
        assert a.quant_state.offset.item() == b.quant_state.offset.item(), name


def test_config_and_bits_per_weight_by_hand(pair):
    from lowbit.eval.size import bits_per_weight

    q = json.loads((pair / "nf4" / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "bitsandbytes" and q["bnb_4bit_quant_type"] == "nf4"
    assert q["bnb_4bit_use_double_quant"] is True and q["llm_int8_skip_modules"] == ["lm_head"]
    # 2 layers x (q, o: 128x128; k, v: 64x128; gate, up, down: 256x128)
    sizes = [128 * 128] * 2 + [64 * 128] * 2 + [256 * 128] * 3
    n = 2 * sum(sizes)
    per = [s // 2 + s // 64 + 4 * -(-s // 64 // 256) + 16 * 4 + 256 * 4 for s in sizes]  # codes, absmax, nested, maps
    state = sum(len(json.dumps({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [1, 1],
                                "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.0}))
                for _ in sizes)  # the JSON quant state: about 150 bytes each (its offset digits vary)
    got = bits_per_weight(pair / "nf4")
    assert got == pytest.approx(8 * (2 * sum(per) + 2 * state) / n, rel=0.01)


def test_lowbit_reads_its_codes_back(pair):
    from lowbit.formats import NF4Tensor

    back = load_model(str(pair / "nf4"))
    assert len(back.quantized) == 14 and all(isinstance(t, NF4Tensor) for t in back.quantized.values())
    float_model = load_model(str(pair / "float")).model
    W = float_model.get_submodule(LINEAR4[1]).weight.data
    from lowbit.formats import NF4Grid
    assert torch.equal(back.quantized[LINEAR4[1]].codes, NF4Grid().rtn(W).codes)


def test_a_format_that_does_not_hold_nf4_is_a_one_line_error(pair, tmp_path, capsys):
    with pytest.raises(LowbitError, match="does not store the nf4 grid"):
        lowbit.quantize(str(pair / "float"), preset("nf4"), tmp_path / "ct")
    assert not (tmp_path / "ct").exists()
    code, _, err = run(["quantize", str(pair / "float"), "--grid", "nf4", "--method", "rtn", "-o",
                        str(tmp_path / "q"), "--no-eval"], capsys)
    one_line_error(code, err, "compressed-tensors does not store the nf4 grid", "--format")
    code, _, err = run(["quantize", str(pair / "float"), "--grid", "nf4", "--group-size", "100", "--method", "rtn",
                        "--format", "bnb", "-o", str(tmp_path / "q"), "--no-eval"], capsys)
    one_line_error(code, err, "not 100", "--group-size 64")


def test_cli_writes_nf4_for_bitsandbytes(pair, tmp_path, capsys):
    code, stdout, err = run(["quantize", str(pair / "float"), "--grid", "nf4", "--method", "rtn", "--format", "bnb",
                             "-o", str(tmp_path / "q"), "--no-eval", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["spec"]["grid"] == "nf4" and summary["spec"]["double_quant"] is True
    assert summary["spec"]["group_size"] == 64
    code, stdout, err = run(["quantize", str(pair / "float"), "--grid", "nf4", "--no-double-quant", "--method",
                             "rtn", "--format", "bnb", "-o", str(tmp_path / "q2"), "--no-eval", "--json"], capsys)
    assert code == 0, err
    q = json.loads((tmp_path / "q2" / "config.json").read_text())["quantization_config"]
    assert q["bnb_4bit_use_double_quant"] is False


@pytest.fixture(scope="module")
def fp4(pair):
    lowbit.quantize(str(pair / "float"), preset("fp4"), pair / "fp4", format="bnb")
    return pair / "fp4"


def test_fp4_file_loads_in_transformers_with_equal_logits(pair, fp4):
    """bitsandbytes decodes FP4 with a 4-decimal copy of the code book (0.6667 for 2/3), lowbit
    with the exact values its file records: the logits agree to 1e-4."""
    import bitsandbytes as bnb

    q = json.loads((fp4 / "config.json").read_text())["quantization_config"]
    assert q["bnb_4bit_quant_type"] == "fp4"
    theirs = _hf(fp4)
    layer = theirs.get_submodule(LINEAR4[0])
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state.quant_type == "fp4"
    for m in theirs.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
    ours = load_model(str(fp4))
    assert {t.quant_type for t in ours.quantized.values()} == {"fp4"}
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours.model(ids).logits, theirs(ids).logits
    torch.testing.assert_close(b, a, rtol=0, atol=1e-4)


def test_fp4_rtn_file_is_bitsandbytes_quantizing_the_float_model(pair, fp4):
    """Same absmax bytes; codes equal but for weights on bitsandbytes' rounded midpoints."""
    from transformers import BitsAndBytesConfig

    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    ref, ours = _hf(pair / "float", quantization_config=cfg), _hf(fp4)
    for name in LINEAR4:
        a, b = ours.get_submodule(name).weight, ref.get_submodule(name).weight
        assert torch.equal(a.quant_state.absmax, b.quant_state.absmax), name
        assert torch.equal(a.quant_state.state2.absmax, b.quant_state.state2.absmax), name
        same = (a.data == b.data).float().mean().item()
        assert same > 0.999, (name, same)


def test_one_code_per_bnb_file(pair, tmp_path):
    spec = preset("nf4", overrides=(("re:.*down_proj", {"grid": "fp4"}),))
    with pytest.raises(LowbitError, match="one grid for the whole model, not fp4 and nf4"):
        lowbit.quantize(str(pair / "float"), spec, tmp_path / "mixed", format="bnb")
    assert not (tmp_path / "mixed").exists()
