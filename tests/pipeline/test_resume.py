"""Layer-by-layer loading and resumable runs: a model read one layer at a time gives the
same bytes as one held in memory; a run killed with SIGKILL leaves no OUT, and --resume
finishes it with output byte-identical to an uninterrupted run."""
import filecmp
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.errors import LowbitError
from lowbit.io.load import load_model
from lowbit.pipeline.layer_store import work_dir_for
from clitools import SUBPROCESS_ENV
from tiny import VOCAB, slow_model, tiny_model

GPTQ = "gptq-w4g32"


def _same_tree(a: Path, b: Path) -> None:
    names_a = sorted(p.name for p in a.iterdir())
    assert names_a == sorted(p.name for p in b.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(a, b, names_a, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


@pytest.mark.parametrize("family", ["llama", "qwen2", "opt"])
def test_layer_by_layer_equals_in_memory(family, tmp_path, default_tokenizer, text_file):
    src = tmp_path / "src"
    tiny_model(family, vocab=VOCAB).save_pretrained(src)
    default_tokenizer.save_pretrained(src)
    kw = dict(calib=text_file, nsamples=8, seqlen=64)
    lazy = lowbit.quantize(str(src), GPTQ, tmp_path / "lazy", **kw)
    assert lazy["loaded"] is None  # read layer by layer, never whole
    eager = lowbit.quantize(load_model(str(src)), GPTQ, tmp_path / "eager", **kw)
    assert eager["loaded"] is not None
    assert (tmp_path / "lazy" / "model.safetensors").read_bytes() == \
        (tmp_path / "eager" / "model.safetensors").read_bytes()
    assert not work_dir_for(tmp_path / "lazy").exists()  # checkpoints removed after writing


def test_layer_by_layer_keeps_outer_tensors_on_disk(tmp_path, default_tokenizer, text_file):
    """An untied lm_head is never read during the walk and the embedding table is dropped
    after the calibration inputs are captured; both are read back for writing, and an
    lm_head the user asks to quantize is read when its turn comes: bytes as in memory."""
    from dataclasses import replace

    from lowbit.io.lazy_weights import load_for_walk
    from lowbit.spec import preset

    src = tmp_path / "src"
    tiny_model("qwen2", vocab=VOCAB).save_pretrained(src)  # qwen2: untied lm_head
    default_tokenizer.save_pretrained(src)
    loaded, lazy = load_for_walk(str(src))
    assert loaded.model.lm_head.weight.is_meta and not loaded.model.model.embed_tokens.weight.is_meta
    lazy.drop_input_embeddings()
    assert loaded.model.model.embed_tokens.weight.is_meta
    assert torch.equal(lazy.tensor("lm_head.weight"), load_model(str(src)).model.lm_head.weight)
    spec = replace(preset(GPTQ), ignore=())  # lm_head quantized too
    kw = dict(calib=text_file, nsamples=8, seqlen=64)
    lazy_run = lowbit.quantize(str(src), spec, tmp_path / "lazy", **kw)
    eager_run = lowbit.quantize(load_model(str(src)), spec, tmp_path / "eager", **kw)
    assert lazy_run["quantized_modules"] == eager_run["quantized_modules"] == 15
    assert (tmp_path / "lazy" / "model.safetensors").read_bytes() == \
        (tmp_path / "eager" / "model.safetensors").read_bytes()


def test_same_inputs_same_bytes(tmp_path, default_tokenizer, text_file):
    src = tmp_path / "src"
    tiny_model("llama", vocab=VOCAB).save_pretrained(src)
    default_tokenizer.save_pretrained(src)
    for name in ("a", "b"):
        lowbit.quantize(str(src), GPTQ, tmp_path / name, calib=text_file, nsamples=8, seqlen=64)
    _same_tree(tmp_path / "a", tmp_path / "b")


def test_shards_split_and_load(tmp_path, default_tokenizer, text_file):
    src = tmp_path / "src"
    tiny_model("qwen2", vocab=VOCAB).save_pretrained(src)
    default_tokenizer.save_pretrained(src)
    one = lowbit.quantize(str(src), "w4g32", tmp_path / "one")
    lowbit.quantize(str(src), "w4g32", tmp_path / "many", max_shard_bytes=2_000_000)
    shards = sorted(p.name for p in (tmp_path / "many").glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    a, b = load_model(str(tmp_path / "one")), load_model(str(tmp_path / "many"))
    ids = torch.randint(0, VOCAB, (1, 16))
    assert torch.equal(a.model(ids).logits, b.model(ids).logits)
    assert one["quantized_modules"] == len(b.quantized) == 14


def _cli(src, out, text_file, *extra):
    return [sys.executable, "-m", "lowbit.cli", "quantize", str(src), "-o", str(out), "--method", "gptq",
            "--group-size", "64", "--calib", str(text_file), "--nsamples", "32", "--seqlen", "128",
            "--no-eval", "--checkpoint-seconds", "0", *extra]


def _kill_after_layer_two(cmd, work, env) -> None:
    """Run cmd and SIGKILL it as soon as its layer store holds layer 2."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (work / "layer-00002.safetensors").exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_then_resume_is_byte_identical(tmp_path, default_tokenizer, text_file):
    src = tmp_path / "src"
    slow_model(src, default_tokenizer)
    env = SUBPROCESS_ENV
    subprocess.run(_cli(src, tmp_path / "ref", text_file), check=True, env=env, capture_output=True)

    out = tmp_path / "out"
    work = work_dir_for(out)
    _kill_after_layer_two(_cli(src, out, text_file), work, env)
    assert not out.exists()  # nothing half-written
    assert not (work / "complete").exists(), "the run finished before the kill: make the model slower"
    done = sorted(p.name for p in work.glob("layer-*.safetensors"))

    resumed = subprocess.run(_cli(src, out, text_file, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming: layers 0-" in resumed.stderr, (done, resumed.stderr[-2000:])
    _same_tree(out, tmp_path / "ref")
    assert not work.exists()


def test_resume_refuses_another_run(tmp_path, default_tokenizer, text_file):
    src = tmp_path / "src"
    tiny_model("llama", vocab=VOCAB).save_pretrained(src)
    default_tokenizer.save_pretrained(src)
    work = work_dir_for(tmp_path / "out")
    work.mkdir()
    (work / "run.json").write_text('{"model": "something else"}\n')
    with pytest.raises(LowbitError, match="another model"):
        lowbit.quantize(str(src), "w4g32", tmp_path / "out", resume=True)
    assert not (tmp_path / "out").exists()


def test_resume_of_a_smoothed_rtn_run_needs_the_saved_activations(tmp_path, default_tokenizer, text_file):
    """RTN needs no calibration, but --smooth on does: a resumed run must continue from saved
    activations like GPTQ (here none were saved yet, so it starts over), never after the newest
    layer file without its inputs. Output byte-identical to an uninterrupted run."""
    from lowbit.spec import QuantSpec

    src = tmp_path / "src"
    slow_model(src, default_tokenizer)
    spec = QuantSpec(method="rtn", bits=4, group_size=64, method_args={"smooth": "on"})
    args = dict(calib=text_file, nsamples=8, seqlen=64, checkpoint_seconds=3600)
    lowbit.quantize(str(src), spec, tmp_path / "ref", **args)

    class Stop(Exception):
        pass

    def stop_after_three(kind, i, n):
        if kind == "layers" and i == 3:
            raise Stop

    out = tmp_path / "out"
    with pytest.raises(Stop):
        lowbit.quantize(str(src), spec, out, progress=stop_after_three, **args)
    assert (work_dir_for(out) / "layer-00002.safetensors").exists() and not out.exists()
    lowbit.quantize(str(src), spec, out, resume=True, **args)
    _same_tree(out, tmp_path / "ref")


# ---- GGUF through the same walk ------------------------------------------------------------

def _gguf_cli(src, out, text_file, *extra):
    return [sys.executable, "-m", "lowbit.cli", "quantize", str(src), "-o", str(out), "--method", "gptq",
            "--format", "gguf", "--gguf-type", "Q4_K_M", "--calib", str(text_file), "--nsamples", "32",
            "--seqlen", "128", "--no-eval", "--checkpoint-seconds", "0", *extra]


def test_gguf_sigkill_then_resume_is_byte_identical(tmp_path, default_tokenizer, text_file):
    """GGUF goes through the layer store like every format: a real SIGKILL mid-run, then --resume,
    gives the same file, byte for byte, as an uninterrupted run."""
    src = tmp_path / "src"
    slow_model(src, default_tokenizer)
    env = SUBPROCESS_ENV
    ref = tmp_path / "ref.gguf"
    subprocess.run(_gguf_cli(src, ref, text_file), check=True, env=env, capture_output=True)

    out = tmp_path / "out.gguf"
    work = work_dir_for(out)
    _kill_after_layer_two(_gguf_cli(src, out, text_file), work, env)
    assert not out.exists() and not list(tmp_path.glob(".out.gguf.tmp*"))  # nothing half-written
    assert not (work / "complete").exists(), "the run finished before the kill: make the model slower"

    resumed = subprocess.run(_gguf_cli(src, out, text_file, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming: layers 0-" in resumed.stderr, resumed.stderr[-2000:]
    assert filecmp.cmp(out, ref, shallow=False)
    assert not work.exists()


def test_gguf_layer_by_layer_equals_in_memory_and_records_its_making(tmp_path, default_tokenizer, text_file):
    from lowbit.io.gguf_reader import gguf_facts

    src = tmp_path / "src"
    slow_model(src, default_tokenizer)
    args = dict(format="gguf", gguf_type="Q4_K_M", calib=text_file, nsamples=16, seqlen=64)
    lazy = lowbit.quantize(str(src), "gptq-w4g128", tmp_path / "lazy.gguf", **args)
    assert lazy["loaded"] is None  # read one layer at a time
    in_memory = lowbit.quantize(load_model(str(src)), "gptq-w4g128", tmp_path / "mem.gguf", **args)
    assert in_memory["loaded"] is not None
    assert filecmp.cmp(tmp_path / "lazy.gguf", tmp_path / "mem.gguf", shallow=False)
    facts = gguf_facts(tmp_path / "lazy.gguf")
    assert facts["base_model"] == str(src.resolve())
    assert facts["spec"]["method"] == "gptq" and facts["gguf_type"] == "Q4_K_M"
    # the types llama.cpp's Q4_K_M mix gives this model (gguf_mixes, checked against llama-quantize
    # in tests/io/test_gguf.py), as the file holds them and as the summary reports them
    from collections import Counter
    from lowbit.io.gguf_mixes import plan_types
    planned = Counter(t.name for t in plan_types(load_model(str(src)).model, "Q4_K_M").values())
    assert facts["tensor_types"] == dict(planned) == lazy["tensor_types"]
    assert set(planned) == {"F32", "Q4_K", "Q6_K"}
