"""lowbit plan: the memory arithmetic by hand (7B = 28 / 14 / 7 / 3.5 GB, 70B = 280 / 140 / 70 /
35, Llama-3-8B's KV cache at 8192 tokens = 1 GiB), weights per grid against the bytes of real
quantized files, what fits where, and the CLI."""
import json

import pytest
import torch

from lowbit.plan import memory
from lowbit.plan.machines import GIB
from lowbit.plan.report import plan
from lowbit.plan.shapes import from_params, model_shapes, parse_count
from lowbit.plan.sizes import parse_size

GB = 10 ** 9


@pytest.mark.parametrize("params,fp32,fp16,int8,int4", [(7e9, 28, 14, 7, 3.5), (70e9, 280, 140, 70, 35)])
def test_weights_at_each_precision_are_the_textbook_figures(params, fp32, fp16, int8, int4):
    p = plan(from_params(params), this_machine_bytes=16 * GIB)
    w = p["weights_bytes"]
    assert (w["fp32"], w["fp16"], w["bf16"], w["int8"], w["int4"]) == (
        fp32 * GB, fp16 * GB, fp16 * GB, int8 * GB, int(int4 * GB))
    assert p["params"] == int(params) and p["guessed_dimensions"]  # no shape given: a published one is used


def test_llama3_8b_kv_cache_at_8192_tokens_is_one_gib():
    s = from_params(8.03e9, layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=128256)
    assert s.head_dim == 128 and not s.guessed
    assert memory.kv_cache_bytes(s, 8192, 1, "fp16") == 2 * 32 * 8 * 128 * 8192 * 2 == GIB
    assert memory.kv_cache_bytes(s, 8192, 4, "fp8") == GIB * 2  # 4 sequences, 1 byte each
    assert memory.kv_cache_bytes(s, 8192, 1, "q8_0") == GIB // 2 * 34 // 32  # 34 bytes per 32 values
    assert memory.kv_cache_bytes(s, 8192, 1, "q4_0") == GIB // 2 * 18 // 32
    # without grouped-query attention (32 KV heads) it would be 4 GiB, not the 8 GB often quoted
    assert memory.kv_cache_bytes(from_params(8e9, layers=32, hidden=4096, heads=32, kv_heads=32), 8192) == 4 * GIB


def test_training_memory_by_hand():
    s = from_params(7e9, layers=32, hidden=4096, intermediate=11008, heads=32, kv_heads=32, vocab=32000)
    t = memory.training_bytes(s, nf4_bytes=4 * GB, context=2048, batch=1, rank=16)
    act = 2 * 2048 * 4096 * 32 + 34 * 2048 * 4096  # checkpointed layer inputs + one layer recomputed
    assert t["full_fp32_adam"] == 16 * 7 * GB + act == t["mixed_precision_adam"]
    # rank 16 on q, k, v, o (4096 x 4096), gate, up (11008 x 4096) and down: 16 x (in + out) each, 32 layers
    adapters = 32 * 16 * (4 * (4096 + 4096) + 3 * (4096 + 11008))
    assert memory.lora_params(s, 16) == adapters
    assert t["lora"] == 2 * 7 * GB + 16 * adapters + act
    assert t["qlora"] == 4 * GB + 16 * adapters + act


def test_grid_bytes_equal_the_files_lowbit_writes(tmp_path, tiny_tok):
    """The plan's int4 g128 and Q4_K_M figures of a model against the files quantize writes."""
    import lowbit
    from lowbit.eval.size import bits_per_weight, size_on_disk
    from tiny import tiny_llm
    from lowbit.io.gguf_reader import open_gguf

    model = tiny_llm("qwen2", hidden=256)  # untied head, widths that k-quant blocks take
    src = tmp_path / "src"
    model.save_pretrained(src)
    tiny_tok.save_pretrained(src)
    shapes = model_shapes(str(src))
    by = {s["name"]: s for s in plan(shapes, this_machine_bytes=GIB)["settings"]}
    lowbit.quantize(str(src), "w4g128", tmp_path / "w4", nsamples=2, seqlen=32)
    # the file also holds each tensor's weight_shape (16 bytes): 0.02% here, nothing on a real model
    assert by["int4 g128"]["bits_per_weight"] == pytest.approx(bits_per_weight(tmp_path / "w4"), rel=1e-3)
    assert by["int4 g128"]["bytes"] == pytest.approx(size_on_disk(tmp_path / "w4"), rel=0.01)
    out = lowbit.quantize(str(src), "w4g128", tmp_path / "q.gguf", format="gguf", gguf_type="Q4_K_M")
    held = sum(int(t.n_bytes) for t in open_gguf(tmp_path / "q.gguf").tensors)
    assert by["Q4_K_M"]["bytes"] == held, out


def test_stored_bytes_from_a_row_sample_equal_the_whole_matrix():
    from lowbit.formats.grid import grid_for
    from lowbit.plan.weights import linear_bytes
    from lowbit.spec import preset

    for name in ("gptq-w4g128", "gptq-w4g128-asym", "nf4-nodq", "gptq-nf4", "nvfp4", "mxfp4", "fp8"):
        whole = grid_for(preset(name)).rtn(torch.randn(1000, 576)).stored_bytes()
        assert abs(linear_bytes(name, 1000, 576) - whole) <= max(8, whole * 1e-4), name  # NF4: nested blocks round up


def test_what_fits_where():
    s = from_params(70e9)
    p = plan(s, context=8192, this_machine_bytes=24 * GIB)
    h100 = next(f for f in p["fits"] if "H100" in f["gpu"])
    assert not h100["by_weights"]["fp16"]["fits"] and h100["by_weights"]["int4 g128"]["fits"]
    assert h100["weights"] == "int8 per channel" and h100["max_ctx"] >= 8192  # 70 GB + 2.7 GB of KV in 79 GiB
    small = next(f for f in p["fits"] if f["gpu"].startswith("RTX 4060"))
    assert not small["fits"] and small["max_ctx"] == 0
    # at max_ctx the total fits and one more token would not (unless capped at the model's maximum)
    kv_tok = memory.kv_cache_bytes(s, 1)
    for f in p["fits"]:
        for w, r in f["by_weights"].items():
            n = r["max_ctx"]
            if 0 < n < s.max_ctx:
                weights = next(x["bytes"] for x in p["settings"] if x["name"] == w) if w != "fp16" else p["weights_bytes"]["fp16"]
                total = lambda c: weights + kv_tok * c + memory.activation_bytes(s, c)  # noqa: E731
                assert total(n) <= f["usable_bytes"] < total(n + 1), (f["gpu"], w)
    assert p["recommendation"]["machine"] == "this machine (free RAM)"


def test_recommendation_follows_the_runtime_and_memory():
    s = from_params(8.03e9, layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=128256)
    r = plan(s, context=4096, runtime="llama.cpp", machine="RTX 3060")["recommendation"]
    assert r["fits"] and r["setting"] == "Q8_0" and "--gguf-type Q8_0" in r["command"]  # 8.5 GB + KV < 11 GiB
    # Q6_K 6.59 GB (llama.cpp's own file of Llama-3-8B: 6.6 GB) + 0.54 GB KV + 0.5 GB prefill activations
    r = plan(s, context=4096, runtime="llama.cpp", machine="8GB")["recommendation"]
    assert r["setting"] == "Q6_K" and 7 * GB < r["total_bytes"] <= 8 * GB
    by = {x["key"]: x["bytes"] for x in plan(s)["settings"]}
    assert by["Q4_K_M"] == pytest.approx(4.92e9, rel=0.01) and by["Q8_0"] == pytest.approx(8.54e9, rel=0.01)
    assert plan(s, context=4096, runtime="ollama", machine="6GB")["recommendation"]["setting"] == "Q4_K_M"
    r = plan(s, context=4096, runtime="vllm", machine="A100 40GB")["recommendation"]
    assert r["tier"] == "float"
    r = plan(s, context=4096, runtime="vllm", machine="RTX 4060")["recommendation"]
    assert r["setting"] == "int4 g128" and r["measured_kld_default_model"] == pytest.approx(0.2151)
    assert not plan(from_params(70e9), runtime="vllm", machine="RTX 4060")["recommendation"]["fits"]


def test_counts_and_sizes_parse():
    assert parse_count("7B") == 7e9 and parse_count("135M") == 135e6 and parse_count("7e9") == 7e9
    assert parse_size("24GB") == 24 * GB and parse_size("80 GiB") == 80 * GIB and parse_size("512MB") == 512 * 10 ** 6


def test_cli_plan_json_has_the_contract_keys_and_bad_input_is_one_line(capsys):
    from clitools import one_line_error, run
    code, out, _ = run(["plan", "--params", "7B", "--ctx", "2048", "--json"], capsys)
    assert code == 0
    p = json.loads(out)
    for key in ("params", "weights_bytes", "kv_cache_bytes", "training_bytes", "fits"):
        assert key in p
    assert {"fp32", "fp16", "int8", "int4"} <= set(p["weights_bytes"])
    assert all({"gpu", "vram_bytes", "max_ctx", "fits"} <= set(f) for f in p["fits"])
    code, out, _ = run(["plan"], capsys)  # the default model, a rich table
    assert code == 0 and "Q4_K_M" in out and "Longest context" in out
    for args, words in ((["plan", "--runtime", "tgi"], "--runtime"), (["plan", "--params", "seven"], "--params"),
                        (["plan", "--hidden", "4096"], "--params"), (["plan", "--machine", "24 gigs"], "--machine")):
        code, _, err = run(args, capsys)
        one_line_error(code, err, words)


def test_default_model_plan_matches_its_quantized_size():
    """The default model (fp32 checkpoint, tied 49152 x 576 embedding kept float): the plan's
    int4 g128 against the 170.7 MB and 4.313 bits per weight the main job measures (docs/results.md)."""
    by = {s["name"]: s for s in plan(model_shapes(None), this_machine_bytes=GIB)["settings"]}
    assert by["int4 g128"]["bits_per_weight"] == pytest.approx(4.313, abs=5e-4)
    assert by["int4 g128"]["bytes"] == pytest.approx(170.7e6, rel=0.003)
