"""--rotate hadamard through lowbit.quantize: the written checkpoint (untied head, rotated
weights) loads in plain transformers and computes what the walk computed; at 8 bits the model
stays close to the float one; read layer by layer it is the same bytes as rotated whole (GGUF
too); best-4bit's rotate "auto" rotates only where that was measured."""
import pytest
import torch

from tests.tiny import tiny_llm


def test_rotated_quantize_writes_a_plain_checkpoint(tmp_path, tiny_tok):
    import lowbit
    from clitools import PROSE
    from lowbit.io.load import load_model
    from lowbit.spec import QuantSpec

    text = tmp_path / "prose.txt"
    text.write_text(PROSE)
    src = tmp_path / "src"
    tiny_llm("llama", vocab=len(tiny_tok)).save_pretrained(src)  # tied head
    tiny_tok.save_pretrained(src)
    ids = torch.tensor([tiny_tok(PROSE)["input_ids"][:64]])
    with torch.no_grad():
        flt = load_model(str(src)).model(ids).logits
    out = tmp_path / "out"
    spec = QuantSpec(method="gptq", bits=8, group_size=-1, method_args={"rotate": "hadamard"})
    s = lowbit.quantize(str(src), spec, out, calib=text, nsamples=8, seqlen=64)
    assert s["rotation"]["untied_head"] and s["rotation"]["kind"] == "hadamard"
    eager = lowbit.quantize(load_model(str(src)), spec, tmp_path / "eager", calib=text, nsamples=8, seqlen=64)
    with torch.no_grad():
        walk = eager["loaded"].model(ids).logits
        back = load_model(str(out)).model(ids).logits
    torch.testing.assert_close(back, walk, rtol=1e-3, atol=1e-3)
    assert (back - flt).abs().max() < 0.05 * flt.abs().max()
    from transformers import AutoConfig
    assert not AutoConfig.from_pretrained(out).tie_word_embeddings
    # the same seed, the same bytes
    again = tmp_path / "again"
    lowbit.quantize(str(src), spec, again, calib=text, nsamples=8, seqlen=64)
    a = sorted(p.name for p in out.glob("*.safetensors"))
    assert a and all((out / n).read_bytes() == (again / n).read_bytes() for n in a)


def _saved(src, tok, family):
    tiny_llm(family, vocab=len(tok)).save_pretrained(src)
    tok.save_pretrained(src)


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # tied head (untied by the rotation), untied head
def test_rotation_layer_by_layer_equals_in_memory(family, tmp_path, tiny_tok, text_file):
    """A model read one layer at a time is rotated as each layer arrives (and the embedding and
    head as they are read back for writing): the same bytes as the whole model rotated at once."""
    import lowbit
    from lowbit.io.load import load_model
    from lowbit.spec import QuantSpec

    src = tmp_path / "src"
    _saved(src, tiny_tok, family)
    spec = QuantSpec(method="gptq", bits=4, group_size=64, method_args={"rotate": "hadamard"})
    kw = dict(calib=text_file, nsamples=8, seqlen=64)
    lazy = lowbit.quantize(str(src), spec, tmp_path / "lazy", **kw)
    assert lazy["loaded"] is None  # never whole in memory
    eager = lowbit.quantize(load_model(str(src)), spec, tmp_path / "eager", **kw)
    assert eager["loaded"] is not None and lazy["rotation"] == eager["rotation"]
    assert lazy["rotation"]["untied_head"] == (family == "llama")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "lazy" / "model.safetensors"), "pt") as f:  # the new copy: 16 bits
        assert f.get_slice("lm_head.weight").get_dtype() == ("F16" if family == "llama" else "F32")
    names = sorted(p.name for p in (tmp_path / "eager").glob("*.safetensors"))
    assert names and all((tmp_path / "lazy" / n).read_bytes() == (tmp_path / "eager" / n).read_bytes()
                         for n in names)
    # and it is the rotated model: the file's logits are those of the quantized walk, near the float
    ids = torch.tensor([tiny_tok("The river ran past the old mill and on toward the sea.")["input_ids"]])
    with torch.no_grad():
        back = load_model(str(tmp_path / "lazy")).model(ids).logits
        walk = eager["loaded"].model(ids).logits
        flt = load_model(str(src)).model(ids).logits
    torch.testing.assert_close(back, walk, rtol=1e-3, atol=1e-3)
    assert (back - flt).abs().max() < 0.25 * flt.abs().max()


def test_rotated_gguf_layer_by_layer_equals_in_memory(tmp_path, tiny_tok, text_file):
    import filecmp

    import lowbit
    from lowbit.io.load import load_model
    from lowbit.spec import QuantSpec

    src = tmp_path / "src"
    _saved(src, tiny_tok, "llama")
    spec = QuantSpec(method="gptq", bits=4, group_size=128, method_args={"rotate": "hadamard"})
    kw = dict(format="gguf", gguf_type="Q4_K_M", calib=text_file, nsamples=8, seqlen=64)
    lazy = lowbit.quantize(str(src), spec, tmp_path / "lazy.gguf", **kw)
    assert lazy["loaded"] is None and lazy["rotation"]["untied_head"]
    lowbit.quantize(load_model(str(src)), spec, tmp_path / "mem.gguf", **kw)
    assert filecmp.cmp(tmp_path / "lazy.gguf", tmp_path / "mem.gguf", shallow=False)


def test_auto_rotation_where_it_was_measured(tmp_path, tiny_tok, text_file, caplog):
    """best-4bit's rotate "auto": a Llama on an integer grid is rotated; an OPT (no RMS norms
    to fold) is not, said once; GGUF block types and other grids are not."""
    import logging

    import lowbit
    from lowbit.spec import QuantSpec, preset
    from tests.tiny import tiny_model

    assert preset("best-4bit").method_args["rotate"] == "auto"
    assert (preset("best-4bit").bits, preset("best-4bit").group_size, preset("best-4bit").method) == (4, 128, "gptq")
    kw = dict(calib=text_file, nsamples=8, seqlen=64)
    llama, opt = tmp_path / "llama", tmp_path / "opt"
    _saved(llama, tiny_tok, "llama")
    tiny_model("opt", vocab=len(tiny_tok)).save_pretrained(opt)
    tiny_tok.save_pretrained(opt)
    assert lowbit.quantize(str(llama), "best-4bit", tmp_path / "a", **kw)["rotation"]["kind"] == "hadamard"
    with caplog.at_level(logging.INFO, logger="lowbit.note"):
        s = lowbit.quantize(str(opt), "best-4bit", tmp_path / "b", **kw)
    assert "rotation" not in s and "no rotation for opt" in caplog.text
    nf4 = QuantSpec(grid="nf4", bits=4, group_size=64, method="gptq", method_args={"rotate": "auto"})
    assert "rotation" not in lowbit.quantize(str(llama), nf4, tmp_path / "c", format="bnb", **kw)
    g = lowbit.quantize(str(llama), "best-4bit", tmp_path / "d.gguf", format="gguf", gguf_type="Q8_0", **kw)
    assert "rotation" not in g
