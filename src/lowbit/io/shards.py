"""Write a checkpoint's tensors as safetensors shards without holding the whole model:
tensors are added piece by piece and a shard is flushed when it reaches max_shard_bytes.
One shard is named model.safetensors; more get the Hugging Face index layout."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

DEFAULT_MAX_SHARD_BYTES = 2 << 30


class ShardWriter:
    def __init__(self, directory: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.dir = Path(directory)
        self.max = max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[tuple[Path, list[str]]] = []
        self.total = 0
        self.names: set[str] = set()

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, t in tensors.items():
            if name in self.names:
                raise ValueError(f"tensor {name} written twice")
            self.names.add(name)
            nbytes = t.numel() * t.element_size()
            if self.pending and self.pending_bytes + nbytes > self.max:
                self._flush()
            self.pending[name] = t.contiguous()
            self.pending_bytes += nbytes
            self.total += nbytes

    def _flush(self) -> None:
        path = self.dir / f".shard-{len(self.files):05d}.safetensors"
        save_file(dict(sorted(self.pending.items())), str(path), metadata={"format": "pt"})
        self.files.append((path, sorted(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[str]:
        """Name the shards; returns their file names."""
        if self.pending or not self.files:
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
