"""Write a checkpoint's tensors as safetensors shards without holding the whole model.

Tensors are added piece by piece; each one's bytes go straight to the shard's data file,
so memory stays at the tensor being added (safetensors' save_file needs a whole shard in
memory and copies it to bytes once more: 2 GiB shards cost 4 GiB). When a shard reaches
max_shard_bytes its header (the safetensors layout: 8-byte little-endian length, JSON,
space padding to 8 bytes) is written and the data appended. One shard is named
model.safetensors; more get the Hugging Face index layout."""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import torch

from lowbit.io.st_dtypes import torch_dtypes

DEFAULT_MAX_SHARD_BYTES = 2 << 30
SAFETENSORS_DTYPES = torch_dtypes()  # {torch dtype: safetensors name} (io/st_dtypes.py)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a contiguous CPU tensor, without a copy."""
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


class ShardWriter:
    def __init__(self, directory: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                 metadata: dict[str, str] | None = None):
        self.dir = Path(directory)
        self.max = max_shard_bytes
        self.metadata = {"format": "pt"} if metadata is None else metadata
        self.entries: dict[str, dict] = {}  # the open shard's header
        self.pending_bytes = 0
        self._data = None  # the open shard's data file
        self.files: list[tuple[Path, list[str]]] = []
        self.total = 0
        self.names: set[str] = set()

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, t in tensors.items():
            if name in self.names:
                raise ValueError(f"tensor {name} written twice")
            if t.dtype not in SAFETENSORS_DTYPES:
                raise ValueError(f"tensor {name} has dtype {t.dtype}, which safetensors cannot store")
            self.names.add(name)
            nbytes = t.numel() * t.element_size()
            if self.entries and self.pending_bytes + nbytes > self.max:
                self._flush()
            if self._data is None:
                self._data = open(self._shard_path().with_suffix(".data"), "wb")
            self._data.write(tensor_bytes(t.contiguous()))
            self.entries[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                                  "data_offsets": [self.pending_bytes, self.pending_bytes + nbytes]}
            self.pending_bytes += nbytes
            self.total += nbytes

    def _shard_path(self) -> Path:
        return self.dir / f".shard-{len(self.files):05d}.safetensors"

    def _flush(self) -> None:
        path = self._shard_path()
        data_path = path.with_suffix(".data")
        if self._data is None:
            open(data_path, "wb").close()
        else:
            self._data.close()
            self._data = None
        header = dict(self.entries)
        if self.metadata:
            header["__metadata__"] = self.metadata
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
        with open(path, "wb") as f, open(data_path, "rb") as data:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            shutil.copyfileobj(data, f, 16 << 20)
        data_path.unlink()
        self.files.append((path, sorted(self.entries)))
        self.entries, self.pending_bytes = {}, 0

    def finish(self) -> list[str]:
        """Name the shards; returns their file names."""
        if self.entries or not self.files:
            self._flush()
        n = len(self.files)
        if n == 1:
            os.replace(self.files[0][0], self.dir / "model.safetensors")
            return ["model.safetensors"]
        names, weight_map = [], {}
        for k, (path, keys) in enumerate(self.files):
            name = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
            os.replace(path, self.dir / name)
            names.append(name)
            weight_map.update({key: name for key in keys})
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return names
