"""SignRound: the learned rounding is written bit for bit as it was tuned; with nothing learned
it is round-to-nearest; on a real decoder layer with correlated inputs its output error is
below RTN's (the defining property); end to end it beats RTN and writes what it computed."""
import pytest
import torch

from lowbit.compat import layer_output
from lowbit.formats import quantize_rtn
from lowbit.methods.signround import SignRoundOptions, Tuned, fake_quant, signround_quantize, tune_layer
from tests.tiny import tiny_llm


def _tuned(W, group, seed=0, spread=True):
    g = torch.Generator().manual_seed(seed)
    ng = 1 if group <= 0 else -(-W.shape[1] // group)
    rows = 1 if group == 0 else W.shape[0]
    if not spread:
        return Tuned(torch.zeros_like(W), torch.ones(rows, ng), torch.ones(rows, ng))
    return Tuned(torch.rand(W.shape, generator=g) - 0.5, 0.5 + 0.5 * torch.rand(rows, ng, generator=g),
                 0.5 + 0.5 * torch.rand(rows, ng, generator=g))


@pytest.mark.parametrize("bits,group,sym,scale_dtype", [(4, 64, False, None), (4, 40, True, "float16"),
                                                        (3, -1, False, None), (2, 0, True, None), (8, 32, False, "float16")])
def test_written_codes_are_the_tuned_rounding_bit_for_bit(bits, group, sym, scale_dtype):
    W = torch.randn(24, 200, generator=torch.Generator().manual_seed(1))
    t = _tuned(W, group)
    qt = signround_quantize(W, t, bits, sym, group, scale_dtype)
    assert qt.q.dtype == torch.uint8 and int(qt.q.max()) <= 2**bits - 1
    assert torch.equal(qt.dequantize(), fake_quant(W, t, bits, sym, group, scale_dtype))


@pytest.mark.parametrize("bits,group,sym", [(4, 64, False), (3, 128, True), (4, -1, True)])
def test_nothing_learned_is_round_to_nearest(bits, group, sym):
    W = torch.randn(32, 256, generator=torch.Generator().manual_seed(2))
    got = signround_quantize(W, _tuned(W, group, spread=False), bits, sym, group)
    assert torch.equal(got.dequantize(), quantize_rtn(W, bits, sym, group).dequantize())


def test_ranges_narrow_the_grid_by_their_factors():
    """Hand-worked: one group [-1, 3] at 2 bits asym, alpha = 0.5 on the max: range [-1, 1.5],
    scale 2.5 / 3, zero round(1.2) = 1."""
    W = torch.tensor([[-1.0, 0.0, 1.0, 3.0]])
    t = Tuned(torch.zeros(1, 4), torch.tensor([[0.5]]), torch.tensor([[1.0]]))
    qt = signround_quantize(W, t, 2, False, -1)
    s = 2.5 / 3
    assert qt.scale.item() == pytest.approx(s) and qt.zero.item() == 1
    assert qt.q.tolist() == [[0, 1, 2, 3]]  # 3.0 clips to the top code
    torch.testing.assert_close(qt.dequantize(), torch.tensor([[-s, 0.0, s, 2 * s]]))


def _layer_and_inputs(seed=0, n=4, T=48):
    model = tiny_llm("llama", hidden=128, seed=seed)
    layer = model.model.layers[0]
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(128, 128, generator=g) / 128**0.5 + torch.eye(128)
    batches = []
    for _ in range(n):
        h = torch.randn(2, T, 128, generator=g) @ mix  # correlated hidden states
        h[..., [3, 70]] *= 8  # and outlier channels, as in real residual streams
        pos = torch.arange(T)[None].expand(2, -1)
        emb = model.model.rotary_emb(h, pos)
        batches.append((h, (), {"position_embeddings": emb, "attention_mask": None, "position_ids": pos}))
    return layer, batches


def _layer_error(layer, batches, weights):
    with torch.no_grad():
        want = [layer_output(layer(h, *a, **kw)) for h, a, kw in batches]
        saved = {n: m.weight.data.clone() for n, m in weights.items()}
        for n, m in weights.items():
            m.weight.data.copy_(weights[n].new_weight)
        got = [layer_output(layer(h, *a, **kw)) for h, a, kw in batches]
        for n, m in weights.items():
            m.weight.data.copy_(saved[n])
    return sum(float(((g - w) ** 2).mean()) for g, w in zip(got, want))


@pytest.mark.parametrize("bits,group,sym", [(4, 32, True), (3, 64, False), (2, 32, False)])
def test_layer_output_error_below_round_to_nearest(bits, group, sym):
    from lowbit.formats.int_affine import IntAffineGrid

    layer, batches = _layer_and_inputs()
    modules = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    grids = {n: IntAffineGrid(bits, group, sym) for n in modules}
    tuned, report = tune_layer(layer, modules, grids, batches, SignRoundOptions(iters=60))
    assert report["loss_best"] < report["loss_start"]
    for n, m in modules.items():
        m.new_weight = quantize_rtn(m.weight.data, bits, sym, group).dequantize()
    rtn = _layer_error(layer, batches, modules)
    for n, m in modules.items():
        m.new_weight = signround_quantize(m.weight.data, tuned[n], bits, sym, group).dequantize()
    sr = _layer_error(layer, batches, modules)
    assert sr < 0.85 * rtn, (sr, rtn)
    assert all(p.requires_grad for p in layer.parameters())  # the layer's own tensors are given back as they were


def test_signround_end_to_end_beats_rtn_and_writes_what_it_computed(tmp_path, tiny_tok):
    import lowbit
    from clitools import PROSE
    from lowbit.io.load import Loaded, load_model
    from lowbit.spec import QuantSpec

    text = tmp_path / "prose.txt"
    text.write_text(PROSE)
    ids = torch.tensor([tiny_tok(PROSE)["input_ids"][:96]])
    src = tmp_path / "src"
    tiny_llm("llama", vocab=len(tiny_tok), seed=0).save_pretrained(src)
    tiny_tok.save_pretrained(src)
    with torch.no_grad():
        flt = load_model(str(src)).model(ids).logits
    err = {}
    for method, args in (("rtn", {}), ("signround", {"iters": 40})):
        spec = QuantSpec(method=method, bits=3, group_size=64, symmetric=False, method_args=args)
        s = lowbit.quantize(Loaded(load_model(str(src)).model, tiny_tok, str(src), "hf"), spec, calib=text,
                            nsamples=8, seqlen=64)
        with torch.no_grad():
            err[method] = float(((s["loaded"].model(ids).logits - flt) ** 2).mean())
    assert err["signround"] < 0.9 * err["rtn"], err
    out = tmp_path / "out"
    spec = QuantSpec(method="signround", bits=3, group_size=64, symmetric=False, method_args={"iters": 10})
    s = lowbit.quantize(str(src), spec, out, calib=text, nsamples=8, seqlen=64)
    assert set(s["tuning"]) == {"model.layers.0", "model.layers.1"}
    assert all(r["loss_best"] <= r["loss_start"] for r in s["tuning"].values())
    ref = lowbit.quantize(Loaded(load_model(str(src)).model, tiny_tok, str(src), "hf"), spec, calib=text,
                          nsamples=8, seqlen=64)
    with torch.no_grad():
        torch.testing.assert_close(load_model(str(out)).model(ids).logits, ref["loaded"].model(ids).logits,
                                   rtol=2e-3, atol=2e-3)


def test_float_targets_are_the_float_models_own_layer_outputs(monkeypatch):
    """targets "float" (the default, AutoRound's): each layer is tuned against the float model's
    output of that layer, as transformers computes it with the whole float model; "layer" tunes
    against the float layer on the quantized inputs, which differ from layer 1 on."""
    import lowbit.methods.signround as sr
    from lowbit.pipeline import quantize_model
    from lowbit.spec import QuantSpec

    model = tiny_llm("llama", seed=1)
    ids = torch.randint(0, 512, (8, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    want = [hs[1], None]  # layer 1's output: hidden_states[2] has the final norm applied
    seen = []
    real = sr.tune_layer

    def spy(layer, modules, grids, batches, o, forward=None, float_outputs=None):
        seen.append((None if float_outputs is None else [h.clone() for h, _, _ in float_outputs],
                     [h.clone() for h, _, _ in batches]))
        return real(layer, modules, grids, batches, o, forward, float_outputs)
    monkeypatch.setattr(sr, "tune_layer", spy)
    walk = {"iters": 3, "forward_dtype": "float32"}
    quantize_model(model, QuantSpec(method="signround", bits=2, group_size=32, method_args=walk), ids)
    (f0, q0), (f1, q1) = seen
    torch.testing.assert_close(f0[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q0[0], hs[0], rtol=1e-5, atol=1e-5)  # layer 0's inputs: both streams equal
    normed = tiny_llm("llama", seed=1).model.norm(f1[0])
    torch.testing.assert_close(normed, hs[2], rtol=1e-4, atol=1e-4)
    assert (q1[0] - f0[0]).abs().max() > 1e-3  # the quantized stream really differs by then
    seen.clear()
    model = tiny_llm("llama", seed=1)
    quantize_model(model, QuantSpec(method="signround", bits=2, group_size=32,
                                    method_args={**walk, "targets": "layer"}), ids)
    assert [f for f, _ in seen] == [None, None]


def test_float_targets_resume_gives_the_same_bytes(tmp_path, tiny_tok):
    """The float stream is saved with the quantized one, so a run stopped after layer 0 and
    resumed writes what an uninterrupted run writes."""
    import lowbit
    from clitools import PROSE
    from lowbit.spec import QuantSpec

    text = tmp_path / "prose.txt"
    text.write_text(PROSE)
    src = tmp_path / "src"
    tiny_llm("llama", vocab=len(tiny_tok), seed=0).save_pretrained(src)
    tiny_tok.save_pretrained(src)
    spec = QuantSpec(method="signround", bits=3, group_size=64, method_args={"iters": 4})
    kw = dict(calib=text, nsamples=8, seqlen=64, checkpoint_seconds=0)
    lowbit.quantize(str(src), spec, tmp_path / "ref", **kw)

    class Stop(Exception):
        pass

    def stop_after_layer_0(stage, done, total):
        if stage == "layers" and done == 1:
            raise Stop

    with pytest.raises(Stop):
        lowbit.quantize(str(src), spec, tmp_path / "out", progress=stop_after_layer_0, **kw)
    assert not (tmp_path / "out").exists()
    s = lowbit.quantize(str(src), spec, tmp_path / "out", resume=True, **kw)
    assert s["tuning"].keys() == {"model.layers.1"}  # layer 0 came from the store
    names = sorted(p.name for p in (tmp_path / "ref").glob("*.safetensors"))
    assert names and all((tmp_path / "out" / n).read_bytes() == (tmp_path / "ref" / n).read_bytes() for n in names)
