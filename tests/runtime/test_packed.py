"""Packed modules compute what the dequantized weight computes: each kernel against
F.linear on qt.dequantize() in float64 (an independent reference), on the layouts lowbit
writes (partial groups, per channel, act-order g_idx, 2/3-bit codes, bias), and every other
kind through the dequantize-per-call fallback."""
import pytest
import torch
from gguf import GGMLQuantizationType

from lowbit.formats import IntAffineGrid, quantize_rtn
from lowbit.formats.ggml_tensor import round_ggml
from lowbit.formats.nf4 import NF4Grid
from lowbit.methods.gptq import gptq_quantize
from lowbit.runtime.packed import pack_model, packed_linear


def _ref(x, qt, bias=None):
    return torch.nn.functional.linear(x.double(), qt.dequantize().double(), None if bias is None else bias.double())


def _rel(y, ref):
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def _w(out, inp, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * 0.05


# kernel group: tinygemm's groups (32..256) that split lowbit's and the row: 576 = 4.5 x 128 runs as g64
@pytest.mark.parametrize("bits,sym,group,inp,kernel_group", [
    (4, True, 128, 576, 64), (4, False, 128, 576, 64), (4, True, 64, 256, 64), (4, False, -1, 576, 64),
    (4, True, 0, 256, 256), (3, False, 128, 512, 128), (2, False, 64, 256, 64), (4, True, 32, 96, 32)])
def test_int4_kernel_equals_the_dequantized_weight(bits, sym, group, inp, kernel_group):
    """exact (float32) within float32 rounding; the fast bf16 path within bf16's."""
    qt = quantize_rtn(_w(48, inp), bits, sym, group)
    bias = torch.randn(48)
    x = torch.randn(2, 5, inp)
    assert _rel(packed_linear(qt, bias, exact=True)(x), _ref(x, qt, bias)) < 2e-6
    m = packed_linear(qt, bias)
    assert m.kernel == "int4 tinygemm"
    assert _rel(m(x), _ref(x, qt, bias)) < 1.5e-2
    assert m(x).shape == (2, 5, 48) and m(x).dtype == torch.float32
    assert m.group == kernel_group
    # 4 bits a weight, a bf16 scale and offset per kernel group, the float32 bias
    assert m.packed_bytes() == 48 * inp // 2 + 48 * (inp // kernel_group) * 4 + 48 * 4


def test_int4_kernel_runs_act_order_groups_by_permuting_inputs():
    inp = 256
    X = torch.randn(512, inp) * torch.linspace(0.1, 3, inp)[torch.randperm(inp, generator=torch.Generator().manual_seed(0))]
    H = 2 * X.T @ X / X.shape[0]
    qt = gptq_quantize(_w(32, inp), H, 4, False, 64, act_order=True, static_groups=False)
    assert qt.act_order  # groups follow act-order: g_idx is not column // 64
    m = packed_linear(qt, exact=True)
    assert m.kernel == "int4 tinygemm" and m.perm is not None
    x = torch.randn(7, inp)
    assert _rel(m(x), _ref(x, qt)) < 2e-6


def test_int8_weight_only_and_w8a8_kernels():
    W = _w(64, 192)
    qt = quantize_rtn(W, 8, True, -1)
    x = torch.randn(3, 192)
    assert _rel(packed_linear(qt, exact=True)(x), _ref(x, qt)) < 2e-6
    m = packed_linear(qt)
    assert m.kernel == "int8 weight-only"
    assert _rel(m(x), _ref(x, qt)) < 1.5e-2
    a = IntAffineGrid(8, -1, True, act="int8-token").rtn(W)
    w8a8 = packed_linear(a)
    assert w8a8.kernel == "int8 x int8"
    # the reference W8A8 kernel (tests/runtime/test_int8_linear.py checks it against int64 products)
    from lowbit.runtime.int8_linear import w8a8 as w8a8_ref
    assert torch.equal(w8a8(x), w8a8_ref(x, a.signed_codes(), a.scale.float().reshape(-1), None))


def test_other_kinds_fall_back_to_dequantizing_per_call():
    W = _w(40, 256)  # 40 rows: not a multiple of the int4 kernel's 16-row tiles either
    for qt in (NF4Grid(64, True).rtn(W), round_ggml(W, GGMLQuantizationType.Q4_K),
               quantize_rtn(W, 4, True, 128)):
        m = packed_linear(qt)
        assert m.kernel == "dequantize per call"
        x = torch.randn(3, 256)
        assert torch.allclose(m(x).double(), _ref(x, qt), rtol=1e-5, atol=1e-6)
        assert "values" not in dict(m.named_buffers())  # codes only, no float copy held


def test_pack_model_replaces_linears_and_keeps_the_function():
    from tiny import tiny_llm
    model = tiny_llm()
    tensors = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "layers" in name:
            tensors[name] = quantize_rtn(mod.weight.data, 4, True, 128)
    with torch.no_grad():
        for name, qt in tensors.items():
            model.get_submodule(name).weight.copy_(qt.dequantize())
    ids = torch.randint(0, 512, (1, 12))
    want = model(ids).logits
    kernels = pack_model(model, dict(tensors), exact=True)
    assert set(kernels.values()) == {"int4 tinygemm"} and len(kernels) == 14
    assert not any(isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if "layers" in n)
    assert torch.allclose(model(ids).logits, want, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "mistral"])  # tied and untied heads
def test_float_head_in_bf16_is_one_table_rounded_once(family):
    """The fast path's bf16 head: the same logits as the float32 model whose head (and tied
    embedding) table was rounded to bf16 by hand, within bf16 matmul rounding; a tied table
    stays one tensor, half the bytes."""
    from tiny import tiny_llm

    from lowbit.runtime.float_head import head_in_bf16
    model, ref = tiny_llm(family), tiny_llm(family)
    tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    with torch.no_grad():
        ref.get_output_embeddings().weight.copy_(ref.get_output_embeddings().weight.bfloat16().float())
    ids = torch.randint(0, 512, (1, 12))
    want = ref(ids).logits
    assert head_in_bf16(model, torch.float32)
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    assert head.weight.dtype == torch.bfloat16
    assert (emb.weight is head.weight) == tied and emb.weight.dtype == (torch.bfloat16 if tied else torch.float32)
    got = model(ids).logits
    assert got.dtype == torch.float32 and _rel(got, want) < 1e-2
    assert not head_in_bf16(model, torch.float32) and not head_in_bf16(tiny_llm(family), torch.bfloat16)
