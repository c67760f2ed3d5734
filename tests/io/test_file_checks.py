"""Hostile model files: each damaged file exits 2 with one line naming the file, the problem
and the fix, before any library parses it; a small seeded fuzz run finds nothing else."""
import errno
import json
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lowbit.errors import LowbitError
from lowbit.io import file_checks
from clitools import one_line_error, run

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from fuzz_corpus import build
    return build(tmp_path_factory.mktemp("corpus"))


def _copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_header(st: Path, edit) -> None:
    data = st.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    st.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def _info(capsys, path, *words, named=None):
    """`lowbit info PATH` exits 2 with one line naming `named` (default PATH) and `words`."""
    code, _, err = run(["info", str(path)], capsys)
    one_line_error(code, err, str(named or path), *words)
    return err


# ---------------------------------------------------------------- safetensors

def test_truncated_safetensors(capsys, tmp_path, corpus):
    d = _copy_dir(corpus["hf"], tmp_path / "m")
    st = d / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size * 2 // 3])
    _info(capsys, d, "is truncated", "re-download")


def test_safetensors_header_length_beyond_file(capsys, tmp_path, corpus):
    d = _copy_dir(corpus["hf"], tmp_path / "m")
    st = d / "model.safetensors"
    size = st.stat().st_size
    st.write_bytes(struct.pack("<Q", size) + st.read_bytes()[8:])
    _info(capsys, st.parent, f"header says {size} bytes, file has {size - 8}", "re-download")


def test_safetensors_overlapping_offsets(capsys, tmp_path, corpus):
    d = _copy_dir(corpus["hf"], tmp_path / "m")

    def overlap(h):  # two norms of the same size share their bytes
        h["model.layers.1.input_layernorm.weight"]["data_offsets"] = \
            h["model.layers.0.input_layernorm.weight"]["data_offsets"]
    _rewrite_header(d / "model.safetensors", overlap)
    _info(capsys, d, "overlap")


def test_safetensors_bad_dtype(capsys, tmp_path, corpus):
    d = _copy_dir(corpus["hf"], tmp_path / "m")
    _rewrite_header(d / "model.safetensors", lambda h: h["model.norm.weight"].update(dtype="Q4"))
    _info(capsys, d, "unknown dtype 'Q4'", "F32")


def test_quantized_weight_shape_inconsistent(capsys, tmp_path, corpus):
    """weight_shape is a number in the file: unpacking must not trust it to allocate."""
    d = _copy_dir(corpus["quant"], tmp_path / "q")
    tensors = load_file(d / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight_shape"] = torch.tensor([2**30, 2**30], dtype=torch.int32)
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    _info(capsys, d, "up_proj", "weight_shape [1073741824, 1073741824] does not match")


# ---------------------------------------------------------------- GGUF

def _gguf_with(tmp_path, corpus, label, value) -> Path:
    from fuzz_mutate import gguf_slots
    data = bytearray(Path(corpus["gguf"]).read_bytes())
    _, off, width = next(s for s in gguf_slots(bytes(data)) if s[0] == label)
    data[off:off + width] = value.to_bytes(width, "little")
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    return path


def test_gguf_bad_magic(capsys, tmp_path, corpus):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUX" + Path(corpus["gguf"]).read_bytes()[4:])
    _info(capsys, path, "is not a GGUF file", "magic")


def test_gguf_huge_string_length(capsys, tmp_path, corpus):
    path = _gguf_with(tmp_path, corpus, "general.architecture string length", 2**62)
    _info(capsys, path, f"of {2**62} bytes", "re-download")


def test_gguf_huge_tensor_count(capsys, tmp_path, corpus):
    path = _gguf_with(tmp_path, corpus, "tensor count", 2**40)
    _info(capsys, path, f"claims {2**40} tensors")


def test_gguf_tensor_past_the_end(capsys, tmp_path, corpus):
    path = tmp_path / "m.gguf"
    path.write_bytes(Path(corpus["gguf"]).read_bytes()[:-1000])
    _info(capsys, path, "is truncated (tensor", "re-download")


def test_gguf_absurd_block_count(capsys, tmp_path, corpus):
    path = _gguf_with(tmp_path, corpus, "llama.block_count value", 2**31)
    _info(capsys, path, f"llama.block_count = {2**31}")


# ---------------------------------------------------------------- config.json

def test_config_absurd_hidden_size(capsys, tmp_path, corpus):
    d = _copy_dir(corpus["hf"], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "hidden_size": 10**12}))
    _info(capsys, d, "hidden_size = 1000000000000", "from 1 to", named=d / "config.json")


def test_config_larger_than_weights(capsys, tmp_path, corpus):
    """Plausible sizes that the weights do not have: transformers would allocate the whole
    model before noticing, so this is refused first."""
    d = _copy_dir(corpus["hf"], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "hidden_size": 4096, "intermediate_size": 11008}))
    _info(capsys, d, "describes a model of about", "weights hold", named=d / "config.json")


def test_config_corrupt_json(capsys, tmp_path, corpus):
    d = _copy_dir(corpus["hf"], tmp_path / "m")
    (d / "config.json").write_text('{"model_type": "llama",')
    _info(capsys, d, "is not valid JSON", "re-download", named=d / "config.json")


# ---------------------------------------------------------------- memory, disk full

def test_memory_estimate_refused_then_overridden(capsys, monkeypatch, corpus):
    monkeypatch.setattr(file_checks, "available_memory", lambda: 1000)
    _info(capsys, corpus["hf"], "needs about", "GB of memory", file_checks.SKIP_MEMORY_ENV)
    monkeypatch.setenv(file_checks.SKIP_MEMORY_ENV, "1")
    code, _, err = run(["info", str(corpus["hf"]), "--json"], capsys)
    assert code == 0, err


def test_layer_by_layer_quantize_checks_files_too(capsys, tmp_path, corpus):
    """`quantize -o` reads a model layer by layer, not through the loader: the same checks
    run first, and the memory estimate is the walk's, not the whole model's."""
    d = _copy_dir(corpus["hf"], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "hidden_size": 4096, "intermediate_size": 11008}))
    code, _, err = run(["quantize", str(d), "-o", str(tmp_path / "o"), "--no-eval"], capsys)
    one_line_error(code, err, "describes a model of about", "weights hold")
    assert not (tmp_path / "o").exists()


def test_layer_walk_memory_estimate():
    # tied 1000 x 64 embedding (64,000); a layer: attention 4 x 64 x 64 = 16,384, MLP 3 x 64 x 128
    # = 24,576; (64,000 + 2 x 40,960) float32 + two float64 128 x 128 Hessians = 845,824 bytes
    cfg = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=4, intermediate_size=128, model_type="llama", tie_word_embeddings=True)
    assert file_checks.layer_walk_estimate(cfg) == 845_824
    assert file_checks.layer_walk_estimate({**cfg, "num_hidden_layers": 40}) == 845_824  # depth is free


def test_layer_by_layer_memory_refused(capsys, monkeypatch, tmp_path, corpus):
    monkeypatch.setattr(file_checks, "available_memory", lambda: 1000)
    code, _, err = run(["quantize", str(corpus["hf"]), "-o", str(tmp_path / "o"), "--no-eval"], capsys)
    one_line_error(code, err, "needs about", file_checks.SKIP_MEMORY_ENV)


def test_disk_full_leaves_no_output(capsys, monkeypatch, tmp_path, corpus):
    real = Path.write_text

    def full(self, *a, **k):
        if ".tmp" in str(self.parent):  # the output being built
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)
    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "o"
    code, _, err = run(["quantize", str(corpus["hf"]), "-o", str(out), "--group-size", "32", "--no-eval", "--json"], capsys)
    one_line_error(code, err, "disk is full", str(out), "free space")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_disk_full_from_safetensors_writer(tmp_path):
    """safetensors' Rust writer reports ENOSPC as a SafetensorError, not an OSError."""
    from lowbit.io.atomic import atomic_dir
    err = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(LowbitError, match="disk is full"):
        with atomic_dir(tmp_path / "o"):
            raise err
    assert list(tmp_path.iterdir()) == []
    assert not file_checks.is_disk_full(OSError(errno.EACCES, "denied"))


# ---------------------------------------------------------------- real files pass, fuzz finds nothing

def test_real_default_model_passes():
    from lowbit.io.default_model import default_gguf, default_model_dir
    file_checks.check_model_file(default_gguf())
    file_checks.check_model_dir(default_model_dir())


def test_small_fuzz_run(tmp_path):
    from fuzz_readers import run as fuzz
    t0 = time.perf_counter()
    res = fuzz(300, seed=7, workdir=tmp_path, log=lambda *a: None)
    assert res["findings"] == [], res["findings"][:5]
    assert sum(res["counts"].values()) == 300 and res["counts"].get("ok", 0) > 0
    assert time.perf_counter() - t0 < 60
