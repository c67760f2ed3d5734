"""Common accelerators and machines, and what of a model fits on each.

Usable memory: a GPU's memory less 1 GiB (CUDA context, kernels, allocator slack); Apple unified
memory at 75% (macOS lets the GPU wire about that much by default on larger machines; less on
8 GB ones); this machine: its MemAvailable now. A model fits at a context when weights + KV cache +
activations at that context are at most the usable memory; max_ctx is the longest context that
does (capped at the model's own maximum), 0 when the weights alone do not fit.
"""
from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30
GB = 10 ** 9
GPU_RESERVE = GIB
APPLE_USABLE = 0.75


@dataclass(frozen=True)
class Machine:
    name: str
    memory_bytes: int
    kind: str  # "gpu", "apple", "this"

    @property
    def usable_bytes(self) -> int:
        if self.kind == "gpu":
            return max(self.memory_bytes - GPU_RESERVE, 0)
        if self.kind == "apple":
            return int(self.memory_bytes * APPLE_USABLE)
        return self.memory_bytes


GPUS = (("RTX 4060 / 3070 (8 GB)", 8), ("RTX 3080 (10 GB)", 10), ("RTX 3060 / 4070 (12 GB)", 12),
        ("RTX 4080 / A4000 / T4 (16 GB)", 16), ("RTX 3090 / 4090 / L4 (24 GB)", 24), ("A100 40GB", 40),
        ("L40S / RTX 6000 Ada / A6000 (48 GB)", 48), ("A100 / H100 80GB", 80), ("H200 (141 GB)", 141))
APPLE = (8, 16, 24, 32, 48, 64, 96, 128, 192)


def machines(this_machine_bytes: int | None = None) -> list[Machine]:
    # vendors quote GPU memory in GiB (an 80 GB card holds 80 GiB); Apple too
    out = [Machine(n, gb * GIB, "gpu") for n, gb in GPUS]
    out += [Machine(f"Apple unified {gb} GB", gb * GIB, "apple") for gb in APPLE]
    if this_machine_bytes is None:
        from lowbit.io.file_checks import available_memory
        this_machine_bytes = available_memory()
    if this_machine_bytes:
        out.append(Machine("this machine (free RAM)", int(this_machine_bytes), "this"))
    return out


def max_context(usable: int, weights: int, kv_per_token: float, act_per_token: float, act_fixed: int,
                model_max: int) -> int:
    """The longest context whose weights + KV + activations fit in `usable` bytes."""
    room = usable - weights - act_fixed
    if room <= 0:
        return 0
    return int(min(model_max, room // (kv_per_token + act_per_token)))
