"""Our streaming safetensors shard writer and direct reader against the safetensors library:
every dtype, empty and 0-d tensors, metadata, shard splitting and the HF index."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lowbit.io.file_checks import check_safetensors
from lowbit.io.lazy_weights import SafetensorsWeights
from lowbit.io.shards import SAFETENSORS_DTYPES, ShardWriter


def _tensors():
    g = torch.Generator().manual_seed(0)
    out = {}
    for dtype in SAFETENSORS_DTYPES:
        x = torch.randn(3, 5, generator=g) * 50
        if dtype == torch.bool:
            out["t_bool"] = x > 0
        elif dtype.is_floating_point:
            out[f"t_{dtype}".replace("torch.", "")] = x.to(dtype)
        else:
            out[f"t_{dtype}".replace("torch.", "")] = x.abs().to(dtype)
    out["empty"] = torch.zeros(0, 4)
    out["scalar"] = torch.tensor(3.5)
    out["strided"] = torch.arange(12.0).reshape(3, 4).T  # not contiguous
    return out


def test_one_shard_reads_back_with_safetensors(tmp_path):
    tensors = _tensors()
    w = ShardWriter(tmp_path)
    for k, v in tensors.items():
        w.add({k: v})
    assert w.finish() == ["model.safetensors"]
    path = tmp_path / "model.safetensors"
    check_safetensors(path)  # our own header checks accept it
    back = load_file(str(path))
    assert sorted(back) == sorted(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"format": "pt"}
    # the direct reader of layer-by-layer loading gives the same tensors
    reader = SafetensorsWeights(tmp_path)
    for k, v in tensors.items():
        assert torch.equal(reader.get(k), v), k


def test_shards_split_with_index(tmp_path):
    tensors = {f"w{i}": torch.full((256,), float(i)) for i in range(10)}  # 1 KiB each
    w = ShardWriter(tmp_path, max_shard_bytes=3 * 1024)
    w.add(tensors)
    names = w.finish()
    assert names == [f"model-{k:05d}-of-00004.safetensors" for k in range(1, 5)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 10 * 1024
    for k, v in tensors.items():
        assert torch.equal(load_file(str(tmp_path / index["weight_map"][k]))[k], v)
    assert not list(tmp_path.glob(".shard-*"))  # no data files left behind


def test_reader_matches_safetensors_writer(tmp_path):
    """Files written by safetensors itself (with its own tensor order) read the same."""
    tensors = {k: v for k, v in _tensors().items() if k != "strided"}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    reader = SafetensorsWeights(tmp_path)
    for k, v in tensors.items():
        assert torch.equal(reader.get(k), v), k


def test_refuses_duplicates_and_unknown_dtypes(tmp_path):
    w = ShardWriter(tmp_path)
    w.add({"a": torch.zeros(2)})
    with pytest.raises(ValueError, match="written twice"):
        w.add({"a": torch.zeros(2)})
    with pytest.raises(ValueError, match="cannot store"):
        w.add({"c": torch.zeros(2, dtype=torch.complex64)})
