"""Write a directory atomically: build it under a temporary name beside the target,
then rename. A crash or kill leaves no partial OUT (only a hidden .tmp to clean up)."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.io.file_checks import disk_full_errors


def written_by_lowbit(path: Path) -> bool:
    """What --overwrite may replace: a directory lowbit wrote (it holds lowbit.json), an empty
    directory, or a GGUF file. A user's own file or model directory is never replaced."""
    if path.is_dir():
        return (path / "lowbit.json").is_file() or not any(path.iterdir())
    if path.is_file() and path.suffix.lower() == ".gguf":
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    return False


def check_output(out: Path, overwrite: bool) -> None:
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise LowbitError(f"output {out} already exists: choose another -o or pass --overwrite")
    if out.is_symlink() or not written_by_lowbit(out):
        what = "directory" if out.is_dir() else "file"
        raise LowbitError(f"--overwrite replaces only what lowbit wrote, and {out} is a {what} lowbit did not "
                          "write (no lowbit.json or GGUF header): choose another -o, or remove it yourself")


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False):
    out = Path(out)
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        with disk_full_errors(out):  # ENOSPC: one line, exit 2
            yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
