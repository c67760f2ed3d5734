"""Bounds-checked validation of model files, run before any library parses or allocates.

safetensors, GGUF and config.json come from strangers. The libraries that read them trust
lengths, counts and shapes written in the file, so a crafted file can make them crash, hang
or allocate terabytes. Each check here reads only what the file size proves is there and
raises LowbitError naming the file, the problem and the fix.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import struct
from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.io.gguf_check import check_gguf, check_gguf_config
from lowbit.io.header_checks import SIZE_LIMITS, check_sizes, config_params, fail, is_int  # noqa: F401
from lowbit.io.st_dtypes import ELEMENT_BYTES

MAX_HEADER = 100 * 2**20  # the safetensors library's own limit
MAX_CONFIG = 16 * 2**20  # config.json is a few KB; larger is not a config
SKIP_MEMORY_ENV = "LOWBIT_SKIP_MEMORY_CHECK"
ST_DTYPES = ELEMENT_BYTES  # sub-byte and exotic safetensors dtypes are refused


def check_safetensors(path) -> int:
    """Validate a .safetensors file's header against its size; return its element count."""
    size = os.path.getsize(path)
    if size < 8:
        fail(path, f"is truncated ({size} bytes, shorter than the 8-byte header length)", "re-download it")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            fail(path, f"is truncated (header says {n} bytes, file has {size - 8} after the length)",
                  "re-download it")
        if n > MAX_HEADER:
            fail(path, f"has a {n}-byte header, over the {MAX_HEADER}-byte limit of safetensors")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        fail(path, f"has a header that is not valid JSON ({type(e).__name__})")
    if not isinstance(header, dict):
        fail(path, "has a header that is not a JSON object")
    data_size = size - 8 - n
    spans, numel_total = [], 0
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                fail(path, "has __metadata__ that is not a map of strings")
            continue
        numel, span = _check_entry(path, name, entry, data_size)
        numel_total += numel
        spans.append((span, name))
    _check_spans(path, spans, data_size)
    return numel_total


def _check_entry(path, name: str, entry, data_size: int):
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        fail(path, f"tensor {name[:80]!r} is not {{dtype, shape, data_offsets}}")
    dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in ST_DTYPES:
        fail(path, f"tensor {name[:80]!r} has unknown dtype {str(dtype)[:20]!r}",
              f"re-export it with one of {', '.join(ST_DTYPES)}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(is_int(d) and d >= 0 for d in shape):
        fail(path, f"tensor {name[:80]!r} has shape {str(shape)[:60]} (want up to 8 non-negative ints)")
    if (not isinstance(offs, list) or len(offs) != 2 or not all(is_int(o) for o in offs)
            or not 0 <= offs[0] <= offs[1]):
        fail(path, f"tensor {name[:80]!r} has data_offsets {str(offs)[:60]} (want [begin, end], 0 <= begin <= end)")
    if offs[1] > data_size:
        fail(path, f"is truncated (tensor {name[:80]!r} ends at data byte {offs[1]}, the file has "
                    f"{data_size} data bytes)", "re-download it")
    numel = math.prod(shape)
    if offs[1] - offs[0] != numel * ST_DTYPES[dtype]:
        fail(path, f"tensor {name[:80]!r} spans {offs[1] - offs[0]} bytes but {dtype} {shape} needs "
                    f"{numel * ST_DTYPES[dtype]}")
    return numel, (offs[0], offs[1])


def _check_spans(path, spans: list, data_size: int) -> None:
    """The tensors must tile the data exactly: no overlap, no hole, nothing after (the
    safetensors library refuses holes too)."""
    end, prev = 0, None
    for (begin, stop), name in sorted(spans):
        if begin < end:
            fail(path, f"tensors {prev[:60]!r} and {name[:60]!r} overlap (bytes {begin}..{end})")
        if begin > end:
            fail(path, f"has {begin - end} unused bytes before tensor {name[:60]!r}")
        end, prev = stop, name
    if end != data_size:
        fail(path, f"has {data_size - end} bytes after its last tensor (file damaged or wrongly joined)")


def check_packed(path, name: str, t: dict, args: dict) -> None:
    """A compressed-tensors module's stored tensors agree with each other, so unpacking
    allocates no more than the packed codes imply (weight_shape is a number in the file)."""
    def bad(problem):
        fail(path, f"module {name[:80]!r}: {problem}", "the checkpoint is damaged; re-export it")
    bits = args.get("num_bits")
    if not is_int(bits) or not 1 <= bits <= 8:
        bad(f"num_bits {str(bits)[:20]} is not an integer from 1 to 8")
    packed, shape = t.get("weight_packed"), t.get("weight_shape")
    if shape is None or tuple(shape.shape) != (2,) or packed.ndim != 2 or shape.is_floating_point():
        bad("weight_shape or weight_packed has the wrong rank or type")
    out, inp = (int(v) for v in shape.tolist())
    per = 32 // bits
    if out != packed.shape[0] or inp <= 0 or -(-inp // per) != packed.shape[1]:
        bad(f"weight_shape [{out}, {inp}] does not match weight_packed {list(packed.shape)} at {bits} bits")
    strategy, group = args.get("strategy") or "tensor", args.get("group_size")
    ngroups = {"tensor": None, "channel": 1}.get(strategy)
    if ngroups is None and strategy == "group":
        if not is_int(group) or group <= 0:
            bad(f"group_size {str(group)[:20]} is not a positive integer")
        ngroups = -(-inp // group)
    scale = t.get("weight_scale")
    if scale is None or (ngroups is None and scale.numel() != 1) or \
            (ngroups is not None and tuple(scale.shape) != (out, ngroups)):
        bad(f"weight_scale {None if scale is None else list(scale.shape)} does not fit [{out}, {inp}]")
    g_idx = t.get("weight_g_idx")
    if g_idx is not None and (tuple(g_idx.shape) != (inp,) or g_idx.is_floating_point()
                              or (inp and not 0 <= int(g_idx.min()) <= int(g_idx.max()) < scale.shape[-1])):
        bad("weight_g_idx does not index the groups of weight_scale")
    zero = t.get("weight_zero_point")
    if not args.get("symmetric", True) and zero is None:
        bad("asymmetric but weight_zero_point is missing")
    if zero is not None and not args.get("symmetric", True) and strategy != "tensor" and \
            tuple(zero.shape) != (-(-out // per), scale.shape[-1]):
        bad(f"weight_zero_point {list(zero.shape)} does not fit weight_scale {list(scale.shape)}")


# ---------------------------------------------------------------- config.json

def check_config_json(path) -> dict:
    """config.json as a dict, refused when it is not JSON, has no model_type, or names sizes
    that would make transformers allocate absurd amounts."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_CONFIG:
        fail(path, f"is {size} bytes, too large for a config", "repair or re-download the model")
    try:
        cfg = json.loads(path.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as e:
        fail(path, f"is not valid JSON ({e.msg}, line {e.lineno})", "repair or re-download the model")
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        fail(path, f"is not valid JSON ({type(e).__name__})", "repair or re-download the model")
    if not isinstance(cfg, dict):
        fail(path, "is not a JSON object", "repair or re-download the model")
    if not isinstance(cfg.get("model_type"), str) or not cfg["model_type"]:
        fail(path, "has no \"model_type\" string", "add it (e.g. \"llama\") or re-download the model")
    if "quantization_config" in cfg and not isinstance(cfg["quantization_config"], (dict, type(None))):
        fail(path, "has a quantization_config that is not an object", "repair or re-download the model")
    check_sizes(path, cfg)
    return cfg


def check_consistent(path, described: int, stored: int, packed: bool) -> None:
    """The config must not describe a model much larger than the weights stored: transformers
    allocates the full model before it notices the shapes disagree."""
    ratio = 16 if packed else 2  # packed: up to 16 two-bit codes per int32 element
    if described > ratio * stored + 2**20:
        fail(path, f"describes a model of about {described / 1e6:,.1f}M parameters but its weights hold "
                    f"{stored / 1e6:,.1f}M", "the config does not belong to these weights; re-download the model")


# ---------------------------------------------------------------- memory

def available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(estimate_bytes: int, what: str = "this model") -> None:
    """Refuse a load/quantize that needs more than MemAvailable, before it starts."""
    avail = available_memory()
    if avail is None or os.environ.get(SKIP_MEMORY_ENV) or estimate_bytes <= avail:
        return
    raise LowbitError(f"loading {what} needs about {estimate_bytes / 1e9:,.1f} GB of memory but only "
                      f"{avail / 1e9:,.1f} GB is available: free memory or use a smaller model "
                      f"(set {SKIP_MEMORY_ENV}=1 to try anyway)")


def load_estimate(params: int, elem_bytes: int = 4) -> int:
    # the model in the load dtype plus a transient copy of the weights as read
    return 2 * params * elem_bytes


# ---------------------------------------------------------------- entry points for load.py

def layer_walk_estimate(cfg: dict, elem_bytes: int = 4) -> int:
    """Memory of a layer-by-layer run: the embedding table, two copies of one decoder layer,
    and the float64 Hessian work of its widest input (two matrices)."""
    total = config_params(cfg)
    n_layers = max(1, int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or 1))
    h = int(cfg.get("hidden_size") or cfg.get("n_embd") or cfg.get("d_model") or 0)
    emb = int(cfg.get("vocab_size") or 0) * h
    outer = emb * (1 if cfg.get("tie_word_embeddings", True) else 2)
    layer = max(0, total - outer) // n_layers
    widest = max(h, int(cfg.get("intermediate_size") or cfg.get("ffn_dim") or cfg.get("n_inner") or 0))
    return (emb + 2 * layer) * elem_bytes + 2 * widest * widest * 8


def check_model_dir(path, elem_bytes: int = 4, layer_by_layer: bool = False) -> None:
    """A Hugging Face / lowbit directory: config.json, every safetensors file, size vs weights,
    memory (of the whole model, or of a layer-by-layer walk)."""
    from transformers import AutoConfig

    path = Path(path)
    cfg = check_config_json(path / "config.json")
    files = sorted(path.glob("*.safetensors"))
    stored = sum(check_safetensors(f) for f in files)
    resolved = AutoConfig.from_pretrained(str(path)).to_dict()  # library defaults fill missing keys
    check_sizes(path / "config.json", resolved)
    described = config_params(resolved)
    if files:
        check_consistent(path / "config.json", described, stored, packed="quantization_config" in cfg)
    need = layer_walk_estimate(resolved, elem_bytes) if layer_by_layer else \
        load_estimate(max(described, stored), elem_bytes)
    check_memory(need, str(path))


def check_model_file(path, elem_bytes: int = 4) -> None:
    """A .gguf file: structure, hyperparameters vs tensors, memory."""
    info = check_gguf(path)
    described = check_gguf_config(path, info)
    stored = sum(t["numel"] for t in info["tensors"])
    check_consistent(path, described, stored, packed=False)  # GGUF shapes are logical shapes
    check_memory(load_estimate(max(described, stored), elem_bytes), str(path))


@contextlib.contextmanager
def reading(path):
    """Whatever a library raises on a file that passed the checks becomes one LowbitError line."""
    try:
        yield
    except LowbitError:
        raise
    except MemoryError:
        raise LowbitError(f"ran out of memory reading {path}: free memory or use a smaller model") from None
    except Exception as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()] or [""]
        first = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]  # "Error(s) in ...:" + the error
        first = first[:300]
        raise LowbitError(f"cannot read {path} ({type(e).__name__}: {first}): the files are damaged "
                          "or not a supported model; re-download or re-export them") from None


__all__ = ["check_safetensors", "check_gguf", "check_config_json", "check_memory", "check_model_dir",
           "check_model_file", "reading"]


# ---------------------------------------------------------------- disk full

DISK_FULL_ERRNOS = (28, 122)  # ENOSPC, EDQUOT


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC from Python, or from safetensors' Rust writer (a SafetensorError that only says
    'No space left on device (os error 28)')."""
    if isinstance(e, OSError):
        return e.errno in DISK_FULL_ERRNOS
    text = str(e)
    return any(f"os error {n})" in text for n in DISK_FULL_ERRNOS) or "No space left on device" in text


@contextlib.contextmanager
def disk_full_errors(out):
    """A full disk while writing OUT becomes one line (atomic_dir then removes the partial OUT)."""
    try:
        yield
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise LowbitError(f"the disk is full while writing {out} (no space left on device; nothing was "
                          "left at OUT): free space or choose another -o") from None


def safetensors_shapes(f: Path) -> dict[str, tuple[str, list]]:
    """{name: (dtype, shape)} from a safetensors header (bounds-checked first), no tensor read."""
    check_safetensors(f)
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        head = json.loads(fh.read(n))
    return {k: (v["dtype"], v["shape"]) for k, v in head.items() if k != "__metadata__"}


def stored_nbytes(dtype: str, shape) -> int:
    """Bytes of a tensor of a safetensors dtype and shape."""
    from lowbit.io.st_dtypes import ELEMENT_BYTES

    return ELEMENT_BYTES[dtype] * math.prod(int(d) for d in shape)
