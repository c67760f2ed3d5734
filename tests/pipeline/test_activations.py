"""Calibration activations past a memory budget go to disk and come back unchanged; a walk
with every batch on disk writes the same bytes as one in memory, and resumes from them."""

import pytest
import torch

import lowbit
from lowbit.pipeline.activations import Activations
from lowbit.pipeline.layer_store import work_dir_for
from tiny import VOCAB, tiny_model

PROSE = ("A lighthouse stands on the rocks at the mouth of the bay; its lamp was first lit in "
         "the year the railway reached the town, and keepers lived there until it was automated. ") * 60


def test_spill_round_trip(tmp_path):
    torch.manual_seed(0)
    hs = [torch.randn(2, 5, 8) for _ in range(4)]
    acts = Activations(budget_bytes=2 * hs[0].numel() * 4, spill_dir=tmp_path / "spill")
    acts.extend((h, (), {"i": i}) for i, h in enumerate(hs))
    assert acts.spilled == 2 and acts.in_memory_bytes == 2 * hs[0].numel() * 4
    assert len(list((tmp_path / "spill").iterdir())) == 2
    for i, (h, _, kw) in enumerate(acts):
        assert torch.equal(h, hs[i]) and kw["i"] == i
    acts.discard()
    assert not (tmp_path / "spill").exists()


@pytest.fixture(scope="module")
def src(tmp_path_factory, default_tokenizer):
    d = tmp_path_factory.mktemp("acts") / "src"
    tiny_model("llama", vocab=VOCAB).save_pretrained(d)
    default_tokenizer.save_pretrained(d)
    (d.parent / "prose.txt").write_text(PROSE)
    return d


def test_all_batches_on_disk_same_bytes(src, tmp_path):
    kw = dict(calib=src.parent / "prose.txt", nsamples=8, seqlen=64)
    lowbit.quantize(str(src), "gptq-w4g32", tmp_path / "memory", **kw)
    lowbit.quantize(str(src), "gptq-w4g32", tmp_path / "disk", acts_memory_bytes=0, **kw)
    assert (tmp_path / "memory" / "model.safetensors").read_bytes() == \
        (tmp_path / "disk" / "model.safetensors").read_bytes()
    assert not work_dir_for(tmp_path / "disk").exists()


def test_resume_from_spilled_activations(src, tmp_path):
    """A crash after layer 0 with activations on disk (checkpointed every layer by hard
    links): --resume reads them back and finishes with the same bytes."""
    kw = dict(calib=src.parent / "prose.txt", nsamples=8, seqlen=64, acts_memory_bytes=0,
              checkpoint_seconds=0)
    lowbit.quantize(str(src), "gptq-w4g32", tmp_path / "ref", **kw)

    def crash(what, done, total):
        if done == 1:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        lowbit.quantize(str(src), "gptq-w4g32", out, progress=crash, **kw)
    work = work_dir_for(out)
    saved = sorted(p.name for p in (work / "acts-00000").iterdir())
    assert saved == ["b00000.safetensors"]  # 8 samples, one batch
    lowbit.quantize(str(src), "gptq-w4g32", out, resume=True, **kw)
    assert (tmp_path / "ref" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
