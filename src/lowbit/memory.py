"""Give freed heap memory back to the operating system.

glibc keeps freed blocks below its mmap threshold (which grows to 32 MB as large tensors are
freed) in its arenas: after tokenizing the calibration text or finishing a layer, hundreds of
MB that nothing uses still count as the process's memory. malloc_trim(0) returns them
(measured: 400 MB after tokenizing the default calibration text). Elsewhere a no-op.
map_large_allocations() fixes that threshold at 1 MB, so that every large tensor has its own
mapping, returned to the system when freed, instead of a place in the heap that the next
tensor may not fit (0.2 GB of a GPTQ layer's peak on a 1.1B model)."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=None)
def _glibc(name: str):
    """glibc's function `name`, or None (another C library, or none)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


@functools.lru_cache(maxsize=1)
def map_large_allocations() -> None:
    """glibc: allocations from 1 MB up get their own mapping (M_MMAP_THRESHOLD, which also stops
    the threshold from growing). Called by the walk; process-wide, once."""
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def release_free_memory() -> None:
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)
