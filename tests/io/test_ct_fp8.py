"""compressed-tensors FP8 ("float-quantized") checkpoints: loaded by transformers + the
compressed-tensors library with logits equal to lowbit's dequantized model, read back by lowbit
as the same codes, and sized by hand."""
import json

import pytest
import torch
from safetensors import safe_open

import lowbit
from lowbit.errors import LowbitError
from lowbit.io.load import load_model
from lowbit.spec import QuantSpec, preset
from clitools import one_line_error, run
from tiny import tiny_llm

pytest.importorskip("compressed_tensors", reason="compressed-tensors (a test dependency) is not installed")


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_tok):
    root = tmp_path_factory.mktemp("fp8")
    tiny_llm("llama", hidden=128, vocab=512).save_pretrained(root / "float")
    tiny_tok.save_pretrained(root / "float")  # GPTQ calibrates with it
    for name in ("fp8", "fp8-weight", "fp8-block"):
        lowbit.quantize(str(root / "float"), preset(name), root / name)
    lowbit.quantize(str(root / "float"), preset("fp8-weight", group_size=0), root / "fp8-tensor")
    return root


@pytest.mark.parametrize("name,strategy", [("fp8", "channel"), ("fp8-weight", "channel"), ("fp8-block", "block"),
                                           ("fp8-tensor", "tensor")])
def test_transformers_loads_it_with_equal_logits(root, name, strategy):
    from transformers import AutoModelForCausalLM

    q = json.loads((root / name / "config.json").read_text())["quantization_config"]
    assert q["format"] == "float-quantized"
    (group,) = q["config_groups"].values()
    assert group["format"] == "float-quantized" and group["weights"]["type"] == "float"
    assert group["weights"]["strategy"] == strategy
    if strategy == "block":
        assert group["weights"]["block_structure"] == [128, 128]
    act = group["input_activations"]
    if name == "fp8":  # vLLM's FP8-dynamic: each token's input in FP8 with its own scale
        assert (act["type"], act["num_bits"], act["strategy"], act["dynamic"]) == ("float", 8, "token", True)
    else:
        assert act is None
    theirs = AutoModelForCausalLM.from_pretrained(str(root / name), dtype=torch.float32).eval()
    ours = load_model(str(root / name))
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours.model(ids).logits, rtol=0, atol=1e-5)


def test_file_layout_and_bits_per_weight_by_hand(root):
    from lowbit.eval.size import bits_per_weight
    from lowbit.formats import FP8Tensor

    files = sorted((root / "fp8").glob("*.safetensors"))
    with safe_open(str(files[0]), framework="pt") as fh:
        w = fh.get_tensor("model.layers.0.mlp.down_proj.weight")
        s = fh.get_tensor("model.layers.0.mlp.down_proj.weight_scale")
    assert w.dtype == torch.float8_e4m3fn and w.shape == (128, 256) and s.shape == (128, 1)
    back = load_model(str(root / "fp8"))
    assert all(isinstance(t, FP8Tensor) for t in back.quantized.values()) and len(back.quantized) == 14
    # per channel: 8 bits per weight plus one float32 scale per row of `in` weights
    sizes = [(128, 128)] * 2 + [(64, 128)] * 2 + [(256, 128)] * 2 + [(128, 256)]
    n = 2 * sum(o * i for o, i in sizes)
    stored = 2 * sum(o * i + 4 * o for o, i in sizes)
    assert bits_per_weight(root / "fp8") == pytest.approx(8 * stored / n, rel=1e-9)


def test_rtn_codes_are_the_float_weights_rounded(root):
    from lowbit.formats import FP8Grid

    W = load_model(str(root / "float")).model.get_submodule("model.layers.1.self_attn.o_proj").weight.data
    back = load_model(str(root / "fp8")).quantized["model.layers.1.self_attn.o_proj"]
    assert torch.equal(back.codes.view(torch.uint8), FP8Grid(-1).rtn(W).codes.view(torch.uint8))


def test_bad_requests_are_one_line_errors(root, tmp_path, capsys):
    with pytest.raises(LowbitError, match="does not store the fp8-e5m2 grid"):
        lowbit.quantize(str(root / "float"), QuantSpec(grid="fp8-e5m2", bits=8, group_size=-1), tmp_path / "e5")
    assert not (tmp_path / "e5").exists()
    code, _, err = run(["quantize", str(root / "float"), "--grid", "fp8", "--method", "rtn", "--format", "bnb",
                        "-o", str(tmp_path / "q"), "--no-eval"], capsys)
    one_line_error(code, err, "does not store the fp8 grid", "--format")
    code, _, err = run(["quantize", str(root / "float"), "--grid", "fp8", "--bits", "4", "--method", "rtn",
                        "-o", str(tmp_path / "q"), "--no-eval"], capsys)
    one_line_error(code, err, "8 bits", "--bits 8")


def test_cli_writes_fp8_with_gptq(root, tmp_path, capsys):
    code, stdout, err = run(["quantize", str(root / "float"), "--grid", "fp8", "--method", "gptq", "--nsamples", "4",
                             "--seqlen", "32", "-o", str(tmp_path / "g"), "--no-eval", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["spec"]["grid"] == "fp8" and summary["spec"]["group_size"] == -1
    assert load_model(str(tmp_path / "g")).quantized


def test_fp8_dynamic_activations_are_run_by_both_loaders(root):
    """The per-token FP8 inputs change the logits (the same weights without them differ), and
    transformers + compressed-tensors, running them too, agree with lowbit (the test above)."""
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    a, w = load_model(str(root / "fp8")), load_model(str(root / "fp8-weight"))
    for name, qt in a.quantized.items():
        assert qt.act == "fp8-token" and w.quantized[name].act == "none"
        assert torch.equal(qt.codes.view(torch.uint8), w.quantized[name].codes.view(torch.uint8))
    with torch.no_grad():
        diff = (a.model(ids).logits - w.model(ids).logits).abs().max().item()
    assert diff > 1e-4, diff


def test_export_re_quantizes_fp8_for_integer_formats(root, tmp_path, capsys):
    from lowbit.convert import export

    summary = export(str(root / "fp8-weight"), "gptq", tmp_path / "g", warn=lambda line: None)
    assert summary["requantized"] == 14 and "fp8 -> int4" in summary["requantize_reason"]
    assert load_model(str(tmp_path / "g")).quantized
    same = export(str(root / "fp8"), "compressed-tensors", tmp_path / "same")
    assert same["lossless"] and same["exact"] == 14
    # bitsandbytes holds int8 rows (LLM.int8()), not 4-bit integers: FP8 goes there as int8
    to_bnb = export(str(root / "fp8"), "bnb", tmp_path / "b", warn=lambda line: None)
    assert to_bnb["requantized"] == 14 and "fp8 -> int8" in to_bnb["requantize_reason"]
    assert all(t.act == "llm-int8" for t in load_model(str(tmp_path / "b")).quantized.values())
    code, _, err = run(["export", str(root / "fp8"), "--format", "awq", "--bits", "3", "-o", str(tmp_path / "a")], capsys)
    one_line_error(code, err, "3")
    assert not (tmp_path / "a").exists()


def _against_transformers_decompressed(path):
    """(lowbit's model of the file, max |logit difference| / max |logit| against transformers):
    transformers loads FP4 files through compressed-tensors, which decompresses them in bfloat16
    (its unpacker's default; its compressed CPU forward mixes bfloat16 weights with float32
    inputs, so the file is decompressed at load)."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    ours = load_model(str(path))
    theirs = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, quantization_config=CompressedTensorsConfig(run_compressed=False)).eval()
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        la, lb = ours.model(ids).logits, theirs(ids).logits
    return ours, (la - lb).abs().max().item() / la.abs().max().item()


def test_nvfp4_file_loads_in_transformers_and_reads_back(root, tmp_path):
    """transformers loads the file through compressed-tensors, which decompresses NVFP4 in bfloat16
    (its unpacker's default; its compressed CPU forward mixes bfloat16 weights with float32 inputs,
    so the file is decompressed at load), so its logits agree with lowbit's to bfloat16 precision."""
    from lowbit.formats import NVFP4Tensor

    lowbit.quantize(str(root / "float"), preset("nvfp4"), tmp_path / "nv")
    q = json.loads((tmp_path / "nv" / "config.json").read_text())["quantization_config"]
    assert q["format"] == "nvfp4-pack-quantized"
    (group,) = q["config_groups"].values()
    assert (group["weights"]["strategy"], group["weights"]["group_size"]) == ("tensor_group", 16)
    ours, err = _against_transformers_decompressed(tmp_path / "nv")
    assert all(isinstance(t, NVFP4Tensor) for t in ours.quantized.values()) and len(ours.quantized) == 14
    print("nvfp4 logits: max error relative to max", err)
    assert err < 5e-3
    from lowbit.eval.size import bits_per_weight
    sizes = [(128, 128)] * 2 + [(64, 128)] * 2 + [(256, 128)] * 2 + [(128, 256)]
    n = 2 * sum(o * i for o, i in sizes)
    assert bits_per_weight(tmp_path / "nv") == pytest.approx(8 * 2 * sum(o * i // 2 + o * i // 16 + 4 for o, i in sizes) / n)


def test_mxfp4_file_loads_in_transformers_and_reads_back(root, tmp_path):
    """MXFP4 (e2m1 + e8m0 scale per 32): compressed-tensors decompresses it (in bfloat16, as for
    NVFP4), so its logits agree with lowbit's to bfloat16 precision; lowbit reads the same codes."""
    from lowbit.eval.size import bits_per_weight
    from lowbit.formats import MXFP4Tensor

    lowbit.quantize(str(root / "float"), preset("mxfp4"), tmp_path / "mx")
    q = json.loads((tmp_path / "mx" / "config.json").read_text())["quantization_config"]
    assert q["format"] == "mxfp4-pack-quantized"
    (group,) = q["config_groups"].values()
    assert (group["weights"]["strategy"], group["weights"]["group_size"], group["weights"]["scale_dtype"]) == (
        "group", 32, "torch.uint8")
    ours, err = _against_transformers_decompressed(tmp_path / "mx")
    assert all(isinstance(t, MXFP4Tensor) for t in ours.quantized.values()) and len(ours.quantized) == 14
    print("mxfp4 logits: max error relative to max", err)
    assert err < 5e-3
    assert bits_per_weight(tmp_path / "mx") == pytest.approx(4.25)
