"""Hadamard rotation of the residual stream: the float model is unchanged (logits within 1e-4)
on every architecture it supports, tied and untied heads; Hadamard matrices are what they
claim; rotated weights are more incoherent; what cannot be rotated says so."""
import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.transforms.hadamard import hadamard, random_rotation
from lowbit.transforms.rotate import rotate_model
from tests.tiny import tiny_llm, tiny_model


@pytest.mark.parametrize("n", [1, 2, 12, 20, 36, 64, 72, 576, 1536, 5632])
def test_hadamard_orders(n):
    H = hadamard(n)
    assert H is not None and set(H.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(H @ H.T, n * torch.eye(n, dtype=torch.float64))


def test_random_rotation_is_orthogonal_and_seeded():
    for n in (576, 44 * 3 + 2):  # 134 = 2 x 67: no construction here, Haar-random instead
        Q = random_rotation(n, torch.Generator().manual_seed(1))
        assert torch.allclose(Q @ Q.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
        assert torch.equal(Q, random_rotation(n, torch.Generator().manual_seed(1)))
    assert hadamard(134) is None


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.double()


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_rotation_is_exact(family):
    model = tiny_llm(family)
    tied = model.config.tie_word_embeddings
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    before = _logits(model, ids)
    done = rotate_model(model, seed=3)
    after = _logits(model, ids)
    assert (after - before).abs().max() < 1e-4 * before.abs().max()
    assert done["untied_head"] == tied
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    # the weights really moved (not a no-op that passes trivially)
    q = model.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(q, tiny_llm(family).model.layers[0].self_attn.q_proj.weight, atol=1e-3)


def test_rotation_exact_at_a_paley_width_and_saves(tmp_path):
    from transformers import AutoModelForCausalLM
    model = tiny_model("llama")  # hidden 72, head_dim 18 (no Hadamard order here: Haar-random)
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(0))
    before = _logits(model, ids)
    done = rotate_model(model, seed=0)
    assert done["hadamard"]  # 72 = 2 x 36 (Paley II)
    assert (_logits(model, ids) - before).abs().max() < 1e-4 * before.abs().max()
    model.save_pretrained(tmp_path)  # untied on disk: a plain loader computes the same logits
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert not again.config.tie_word_embeddings
    assert (_logits(again, ids) - before).abs().max() < 1e-4 * before.abs().max()


def _coherence(W):
    return float(W.abs().max() / W.pow(2).mean().sqrt())


def _outlier_norms(model, factor=30.0, channels=(3, 40, 77, 150)):
    """RMSNorm weights with a few channels far larger than the rest, as trained LLMs have them:
    folded into the readers they are the outlier columns that rotations exist for."""
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.fill_(1.0)
                norm.weight[list(channels)] = factor
    return model


def test_rotation_makes_weights_incoherent():
    model = _outlier_norms(tiny_llm("llama"))
    layer = model.model.layers[0]
    with torch.no_grad():  # what quantization sees: readers with the norm folded in
        before = [_coherence(layer.self_attn.q_proj.weight * layer.input_layernorm.weight),
                  _coherence(layer.mlp.gate_proj.weight * layer.post_attention_layernorm.weight)]
    rotate_model(model, seed=0)
    after = [_coherence(layer.self_attn.q_proj.weight), _coherence(layer.mlp.gate_proj.weight)]
    assert after[0] < 0.5 * before[0] and after[1] < 0.5 * before[1]


def test_rotation_lowers_rtn_error_on_outliers():
    """What the rotation is for: at 3 bits per channel, round-to-nearest of a reader with
    outlier columns costs less output error after rotating (same inputs, rotated alike)."""
    from lowbit.formats import quantize_rtn
    model = _outlier_norms(tiny_llm("llama"))
    W = (model.model.layers[0].self_attn.q_proj.weight * model.model.layers[0].input_layernorm.weight).detach()
    x = torch.randn(256, W.shape[1], generator=torch.Generator().manual_seed(0))
    Q = random_rotation(W.shape[1], torch.Generator().manual_seed(0)).float()

    def err(Wm, xm):
        return float((xm @ Wm.T - xm @ quantize_rtn(Wm, 3, True, -1).dequantize().T).pow(2).sum())
    plain, rotated = err(W, x), err(W @ Q, x @ Q)
    assert torch.allclose(x @ W.T, (x @ Q) @ (W @ Q).T, atol=1e-3)
    assert rotated < 0.7 * plain  # 0.55x here


def test_unsupported_architecture_is_one_line():
    with pytest.raises(LowbitError, match="not supported for opt"):
        rotate_model(tiny_model("opt"))

