"""Model directories written by transformers 4.57 and by transformers 5 (tests/data/saved-by-*,
made by tests/data/make_saved_by.py) load, quantize, evaluate and export under whichever
transformers is installed, computing with the file's RoPE theta (100000, not the default 10000),
head_dim (32, not hidden/heads = 16) and untied head."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import LlamaConfig

import lowbit
from lowbit.compat import rope_theta
from lowbit.errors import LowbitError
from lowbit.io.hf_config import check_config
from lowbit.io.load import load_model

DATA = Path(__file__).parents[1] / "data"
VERSIONS = ["4", "5"]


def _kld(ref: torch.Tensor, logits: torch.Tensor) -> float:
    p = F.log_softmax(ref.double(), -1)
    return float((p.exp() * (p - F.log_softmax(logits.double(), -1))).sum(-1).mean())


@pytest.fixture(scope="module", params=VERSIONS)
def saved(request):
    d = DATA / f"saved-by-transformers-{request.param}"
    return d, load_file(str(d / "reference.safetensors"))


def test_float_model_computes_as_saved(saved):
    d, ref = saved
    loaded = load_model(str(d))
    assert rope_theta(loaded.model.config) == 100000.0
    assert loaded.model.config.head_dim == 32 and not loaded.model.config.tie_word_embeddings
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ref["ids"]).logits, ref["logits"], atol=1e-5, rtol=1e-4)
    assert loaded.tokenizer("The river rises")["input_ids"]  # read by either version


def test_quantize_eval_export_carry_rope(saved, tmp_path):
    d, ref = saved
    out = tmp_path / "w8"
    lowbit.quantize(str(d), "w8", out)  # the layer-by-layer walk `lowbit quantize -o` takes
    with torch.no_grad():
        q = load_model(str(out)).model(ref["ids"]).logits
        wrong = load_model(str(d))  # the same weights computed with the default theta: far off
        wrong.model.config.rope_theta = 10000.0
        if hasattr(wrong.model.config, "rope_parameters") and isinstance(wrong.model.config.rope_parameters, dict):
            wrong.model.config.rope_parameters["rope_theta"] = 10000.0
        from lowbit.compat import init_nonpersistent_buffers
        init_nonpersistent_buffers(wrong.model)
        off = wrong.model(ref["ids"]).logits
    kld, kld_wrong = _kld(ref["logits"], q), _kld(ref["logits"], off)
    agree = float((ref["logits"].argmax(-1) == q.argmax(-1)).double().mean())
    assert kld < 0.01 and agree >= 0.9 and kld_wrong > 20 * kld, (kld, agree, kld_wrong)
    res = lowbit.evaluate(str(out), data=DATA / "prose.txt", seqlen=64, max_windows=4, cache_base=False)
    assert res["base"] == str(d.resolve()) and res["kld"] < 0.01
    gguf = lowbit.export(str(out), "gguf", tmp_path / "m.gguf", gguf_type="F32")
    back = load_model(gguf["out"])
    assert rope_theta(back.model.config) == 100000.0
    with torch.no_grad():
        torch.testing.assert_close(back.model(ref["ids"]).logits, q, atol=1e-4, rtol=1e-4)


def test_gptq_calibrates_with_the_saved_tokenizer(saved, tmp_path):
    d, _ = saved
    s = lowbit.quantize(str(d), "gptq-w4g32", tmp_path / "g", calib=DATA / "prose.txt", nsamples=8, seqlen=64)
    assert s["quantized_modules"] == 14


def test_a_config_not_computed_as_written_is_an_error(tmp_path):
    config = LlamaConfig(rope_theta=10000.0)
    with pytest.raises(LowbitError, match="rope_theta 500000.0 in the file, 10000.0 in use"):
        check_config(config, {"rope_theta": 500000.0}, tmp_path)
    with pytest.raises(LowbitError, match="head_dim 64 in the file"):
        check_config(LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=32), {"head_dim": 64}, tmp_path)
    check_config(config, {"rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}}, tmp_path)
