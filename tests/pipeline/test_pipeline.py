"""The sequential layer walk on tiny random models of every supported family."""
import pytest
import torch

from lowbit.formats import quantize_rtn
from lowbit.io import compressed_tensors as ct
from lowbit.pipeline import quantize_model, target_linears
from lowbit.spec import QuantSpec
from tiny import tiny_model

FAMILIES = ["llama", "qwen2", "mistral", "opt"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", [QuantSpec(bits=4, group_size=32), QuantSpec(bits=3, group_size=-1, symmetric=False)])
def test_walk_equals_direct_rtn(family, spec):
    model = tiny_model(family)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    linears = {n: m.weight.detach().clone() for n, m in target_linears(model, spec).items()}
    result = quantize_model(model, spec)
    assert set(result.tensors) == set(linears)
    assert "lm_head" not in result.tensors
    assert len(linears) == 2 * (6 if family == "opt" else 7)  # Linears per layer x 2 layers
    params = dict(model.named_parameters())
    for name, W in linears.items():
        direct = quantize_rtn(W, spec.bits, spec.symmetric, spec.group_size).dequantize()
        assert torch.equal(params[f"{name}.weight"], direct), name
        assert torch.equal(result.tensors[name].dequantize(), direct)
    for n, p in params.items():  # everything else untouched (embeddings, norms, biases, lm_head)
        if n[: -len(".weight")] not in linears:
            assert torch.equal(p, original[n]), n


def test_fit_layout_for_compressed_tensors_is_recorded():
    model = tiny_model("llama")
    result = quantize_model(model, QuantSpec(bits=4, group_size=32), fit_layout=ct.fit_layout)
    # 72-wide rows: 32 does not divide 72, 24 is the largest size <= 32 that does
    q = "model.layers.0.self_attn.q_proj"
    assert result.layout_changes[q] == {"requested": 32, "used": 24}
    assert result.tensors[q].scale.shape == (72, 3)
    down = "model.layers.0.mlp.down_proj"  # 128-wide rows: 32 divides, unchanged
    assert down not in result.layout_changes and result.tensors[down].group_size == 32


def test_unsupported_architecture_names_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    from lowbit.errors import LowbitError
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(LowbitError, match="llama.*opt|supports"):
        quantize_model(model, QuantSpec())


def test_ignore_and_targets():
    model = tiny_model("llama")
    spec = QuantSpec(targets=("re:.*mlp\\..*",), ignore=("re:.*down_proj",))
    names = set(target_linears(model, spec))
    assert names == {f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj")}
