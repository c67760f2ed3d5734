"""Per-layer results on disk, so a run can be killed at any layer and resumed.

work dir (beside OUT, never inside it):
  run.json                 what the run is (model, spec, calibration): resume refuses another run
  layer-00007.safetensors  the quantized tensors of layer 7's Linears, any kind (their named
                           tensors and header, formats/qtensor.py), and the layer's other
                           tensors (norms, biases) as they are after quantizing
  extra-NAME.safetensors   state the caller keeps beside the layers (the head's statistics)
  acts-00007/              the calibration activations after layer 7, a file per batch
                           (only the newest kept)
  spill/                   activations past the memory budget (pipeline/activations.py)
Every file is written under a temporary name and renamed, so a file that exists is whole.
Resuming restarts after the newest activations; the layers after them are recomputed,
deterministically, so the output is byte-identical to an uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lowbit.errors import LowbitError
from lowbit.formats import QTensor, from_named, to_named

log = logging.getLogger(__name__)
note = logging.getLogger("lowbit.note")  # what a user should know (the CLI shows it)


def work_dir_for(out: Path) -> Path:
    return out.parent / f".{out.name}.lowbit-partial"


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from lowbit.io.file_checks import disk_full_errors

    tmp = path.with_name(path.name + ".tmp")
    with disk_full_errors(path.parent):  # a full disk is one line; --resume continues after freeing space
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def layers_saved(work_dir: Path) -> int:
    """How many layers (0, 1, ... without a gap) a partial run has finished."""
    i = 0
    while (Path(work_dir) / f"layer-{i:05d}.safetensors").is_file():
        i += 1
    return i


class LayerStore:
    """discard: an existing partial run that is not resumed is deleted (the user passed
    --overwrite or confirmed); otherwise it is kept and the run refused."""

    def __init__(self, work_dir: Path, run: dict, resume: bool, acts_every_seconds: float | None = None,
                 discard: bool = False):
        self.dir = Path(work_dir)
        self.acts_every = acts_every_seconds
        self._last_acts = time.monotonic()
        self._save_cost: float | None = None  # seconds the last activation save took
        self.resumed = False
        run_file = self.dir / "run.json"
        run_text = json.dumps(run, indent=2, sort_keys=True) + "\n"
        if resume and self.dir.is_dir() and run_file.is_file():
            if run_file.read_text() != run_text:
                raise LowbitError(f"the partial run in {self.dir} was for another model, spec or calibration: "
                                  "drop --resume to start over, or rerun with the same arguments")
            self.resumed = True
        else:
            if self.dir.exists():
                if resume:
                    note.info("resuming: %s holds no run description; starting at layer 0", self.dir)
                elif not discard:
                    n = layers_saved(self.dir)
                    raise LowbitError(f"a partial run is kept in {self.dir} ({n} layers done): pass --resume to "
                                      "continue it, or --overwrite to discard it and start over")
                shutil.rmtree(self.dir)
            elif resume:
                note.info("resuming: no partial run in %s; starting at layer 0", self.dir)
            self.dir.mkdir(parents=True)
            run_file.write_text(run_text)

    def layers_saved(self) -> int:
        return layers_saved(self.dir)

    # --- what is done -----------------------------------------------------------------
    def resume_point(self, needs_acts: bool = True) -> int:
        """Index of the newest layer the run can continue after (-1: start from layer 0):
        with calibration, the newest saved activations; without, the newest layer file."""
        complete = self.dir / "complete"
        if complete.is_file():
            return int(complete.read_text()) - 1
        if not needs_acts:
            return self.layers_saved() - 1
        found = [int(m.group(1)) for p in self.dir.glob("acts-*")
                 if (m := re.fullmatch(r"acts-(\d+)", p.name)) and p.is_dir()]
        newest = max(found, default=-1)
        if newest >= 0 and not all(self.layer_file(i).is_file() for i in range(newest + 1)):
            return -1
        return newest

    def layer_file(self, i: int) -> Path:
        return self.dir / f"layer-{i:05d}.safetensors"

    # --- writing ------------------------------------------------------------------------
    def save_layer(self, i: int, tensors: dict[str, QTensor], specs: dict, changes: dict,
                   plain: dict[str, torch.Tensor]) -> None:
        flat, info = {}, {}
        for name, qt in tensors.items():
            state, header = to_named(qt)
            for f, t in state.items():
                flat[f"{name}:{f}"] = t
            info[name] = {"tensor": header, "spec": specs[name].to_dict(), "change": changes.get(name)}
        for k, v in plain.items():
            flat[f"plain:{k}"] = v
        _save_atomic(flat, self.layer_file(i), {"modules": json.dumps(info, sort_keys=True)})

    def maybe_save_acts(self, i: int, hidden: list, force: bool = False) -> None:
        """Activations after layer i, one file per batch in the directory acts-i. They are large:
        by default they are saved once the work since the last save is worth ten times what
        saving costs (and at least every minute), so saving takes at most a tenth of the run and
        a killed run loses little of its work; acts_every (seconds) fixes the interval instead.
        hidden: each batch's tensor, or the Path of a file already holding it (spilled
        activations: linked, not copied)."""
        since = time.monotonic() - self._last_acts
        if self.acts_every is not None:
            due = since >= self.acts_every
        else:
            if self._save_cost is None:  # not measured yet: a disk writes a few hundred MB/s
                nbytes = sum(h.stat().st_size if isinstance(h, Path) else h.numel() * h.element_size()
                             for h in hidden)
                self._save_cost = nbytes / 300e6
            due = since >= min(60.0, 10 * self._save_cost)
        if not (force or due):
            return
        t0 = time.monotonic()
        from lowbit.io.file_checks import disk_full_errors

        final = self.dir / f"acts-{i:05d}"
        tmp = self.dir / f"acts-{i:05d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        with disk_full_errors(self.dir):
            for b, h in enumerate(hidden):
                dest = tmp / f"b{b:05d}.safetensors"
                if isinstance(h, Path):
                    try:
                        os.link(h, dest)
                    except OSError:  # another file system: copy
                        shutil.copyfile(h, dest)
                else:
                    save_file({"h": h.contiguous()}, str(dest))
        os.replace(tmp, final)  # a directory named acts-i is whole
        self._drop_acts(keep=final.name)
        self._last_acts = time.monotonic()
        self._save_cost = self._last_acts - t0

    def _drop_acts(self, keep: str | None = None) -> None:
        for p in self.dir.glob("acts-*"):
            if p.name != keep:
                shutil.rmtree(p, ignore_errors=True)

    def mark_complete(self, n_layers: int) -> None:
        """Every layer is saved: a resume goes straight to writing the output."""
        (self.dir / "complete.tmp").write_text(str(n_layers))
        os.replace(self.dir / "complete.tmp", self.dir / "complete")
        self._drop_acts()

    # --- reading ------------------------------------------------------------------------
    def load_acts(self, i: int):
        """The saved activations after layer i, one batch at a time."""
        for path in sorted((self.dir / f"acts-{i:05d}").glob("b*.safetensors")):
            with safe_open(str(path), framework="pt") as fh:
                yield fh.get_tensor("h")

    def load_layer(self, i: int):
        """(codes by module, spec dicts by module, layout changes, plain tensors) of layer i."""
        from lowbit.spec import QuantSpec

        path = self.layer_file(i)
        with safe_open(str(path), framework="pt") as fh:
            info = json.loads(fh.metadata()["modules"])
            # copies: a tensor left on the file's mapping keeps the pages it touched in memory
            raw = {k: fh.get_tensor(k).clone() for k in fh.keys()}
        tensors, specs, changes = {}, {}, {}
        for name, meta in info.items():
            state = {k[len(name) + 1:]: v for k, v in raw.items() if k.startswith(name + ":")}
            tensors[name] = from_named(state, meta["tensor"])
            specs[name] = QuantSpec.from_dict(meta["spec"])
            if meta["change"]:
                changes[name] = meta["change"]
        plain = {k[len("plain:"):]: v for k, v in raw.items() if k.startswith("plain:")}
        return tensors, specs, changes, plain

    def save_extra(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        _save_atomic(tensors, self.dir / f"extra-{name}.safetensors", {})

    def load_extra(self, name: str) -> dict[str, torch.Tensor] | None:
        path = self.dir / f"extra-{name}.safetensors"
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k).clone() for k in fh.keys()}

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
