"""GGUF structure check: the header, key/values and tensor table parsed with struct over a
memory map, every length bounded by the bytes that remain before it is used, so nothing is
allocated in proportion to a number the file claims. gguf-py's reader (used by transformers)
trusts those numbers; it only runs on files that pass here.

Layout (little-endian): "GGUF" u32 version, u64 n_tensors, u64 n_kv,
  n_kv x (string key, u32 type, value), n_tensors x (string name, u32 n_dims, n_dims x u64,
  u32 ggml type, u64 offset), padding to general.alignment, tensor data.
A string is u64 length + UTF-8 bytes; an array is u32 element type, u64 count, elements.
"""
from __future__ import annotations

import mmap
import struct

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUF_DEFAULT_ALIGNMENT, GGUFValueType

from lowbit.io.header_checks import check_sizes, config_params, fail

SCALAR = {GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
          GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
          GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<B", GGUFValueType.UINT64: "<Q",
          GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d"}
MAX_DIMS = 4  # GGML_MAX_DIMS
KEEP_ARRAY = 4096  # int arrays up to this length are kept (per-layer head counts)


def _readable_types() -> set:
    """Tensor types gguf-py can dequantize (what transformers calls on each tensor)."""
    from gguf.quants import _type_traits
    return {GGMLQuantizationType.F32, GGMLQuantizationType.F16, *_type_traits}


class _Cursor:
    def __init__(self, buf, path):
        self.buf, self.path, self.pos = buf, path, 0

    def need(self, n: int, what: str) -> None:
        left = len(self.buf) - self.pos
        if n > left:
            fail(self.path, f"is truncated or damaged ({what} needs {n} bytes at offset {self.pos}, "
                             f"only {left} remain)", "re-download it")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def string(self, what: str) -> str:
        n = self.unpack("<Q", f"{what} length")
        left = len(self.buf) - self.pos
        if n > left:  # bound before reading: a huge length stops here
            fail(self.path, f"claims {what} of {n} bytes at offset {self.pos}, but only {left} bytes "
                             "remain (damaged or truncated)", "re-download it")
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            fail(self.path, f"has {what} that is not UTF-8 at offset {self.pos - n}")


def check_gguf(path) -> dict:
    """Validate a GGUF file; return {"kv": {key: value}, "tensors": [...], "data_offset": int}."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < 24:
            fail(path, f"is not a GGUF file ({size} bytes, shorter than the 24-byte header)",
                  "give a complete .gguf file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(_Cursor(buf, path), size)


def _parse(c: _Cursor, size: int) -> dict:
    path = c.path
    if c.buf[:4] != b"GGUF":
        fail(path, f"is not a GGUF file (magic {bytes(c.buf[:4])!r}, want b'GGUF')", "give a .gguf model file")
    c.pos = 4
    version = c.unpack("<I", "version")
    if version not in (2, 3):
        fail(path, f"has GGUF version {version}; lowbit reads versions 2 and 3 (little-endian)",
              "convert it with a current llama.cpp")
    n_tensors, n_kv = c.unpack("<Q", "tensor count"), c.unpack("<Q", "key/value count")
    # each key/value takes >= 13 bytes (8 length + 1 key byte + 4 type), each tensor >= 28
    if n_kv > (size - c.pos) // 13:
        fail(path, f"claims {n_kv} key/values, more than its {size} bytes can hold (damaged)")
    if n_tensors > (size - c.pos) // 28:
        fail(path, f"claims {n_tensors} tensors, more than its {size} bytes can hold (damaged)")
    kv = {}
    for _ in range(n_kv):
        key = c.string("a key")
        if key in kv:
            fail(path, f"has key {key[:80]!r} twice")
        kv[key] = _value(c, c.unpack("<I", f"type of {key[:80]!r}"), key, depth=0)
    align = kv.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or align <= 0 or align & (align - 1) or align > 2**20:
        fail(path, f"has general.alignment {str(align)[:30]}, not a power of two up to 2**20")
    tensors = [_tensor_info(c) for _ in range(n_tensors)]
    data_offset = -(-c.pos // align) * align
    _check_tensor_data(path, tensors, data_offset, size, align)
    return {"kv": kv, "tensors": tensors, "data_offset": data_offset}


def _value(c: _Cursor, vtype: int, key: str, depth: int):
    what = f"value of {key[:80]!r}"
    if vtype == GGUFValueType.STRING:
        return c.string(what)
    if key == "general.alignment" and vtype != GGUFValueType.UINT32:
        fail(c.path, f"has general.alignment of value type {vtype}, not uint32 (damaged)")
    if vtype in SCALAR.keys():
        v = c.unpack(SCALAR[GGUFValueType(vtype)], what)
        return v if vtype != GGUFValueType.BOOL else bool(v)
    if vtype == GGUFValueType.ARRAY and depth == 0:
        etype = c.unpack("<I", f"element type of {key[:80]!r}")
        count = c.unpack("<Q", f"length of {key[:80]!r}")
        if etype in SCALAR.keys():
            n = struct.calcsize(SCALAR[GGUFValueType(etype)])
            c.need(count * n, f"array {key[:80]!r} of {count} elements")
            if count <= KEEP_ARRAY and etype != GGUFValueType.FLOAT32:
                fmt = "<" + SCALAR[GGUFValueType(etype)][1] * count
                vals = list(struct.unpack_from(fmt, c.buf, c.pos))
            else:
                vals = count
            c.pos += count * n
            return vals
        if etype == GGUFValueType.STRING:
            c.need(count * 8, f"array {key[:80]!r} of {count} strings")  # >= 8 bytes each
            for i in range(count):
                c.string(f"string {i} of {key[:80]!r}")
            return count
        fail(c.path, f"has array {key[:80]!r} of element type {etype}, which GGUF readers do not support")
    fail(c.path, f"has key {key[:80]!r} of unknown value type {vtype} (damaged)")


def _tensor_info(c: _Cursor) -> dict:
    name = c.string("a tensor name")
    n_dims = c.unpack("<I", f"dims of tensor {name[:80]!r}")
    if not 1 <= n_dims <= MAX_DIMS:
        fail(c.path, f"tensor {name[:80]!r} has {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})")
    dims = [c.unpack("<Q", f"shape of tensor {name[:80]!r}") for _ in range(n_dims)]
    if not all(0 < d < 2**48 for d in dims):
        fail(c.path, f"tensor {name[:80]!r} has shape {dims} (each dimension must be positive)")
    ttype = c.unpack("<I", f"type of tensor {name[:80]!r}")
    offset = c.unpack("<Q", f"offset of tensor {name[:80]!r}")
    if ttype not in _readable_types():
        fail(c.path, f"tensor {name[:80]!r} has type {ttype}, which lowbit cannot read",
              "re-quantize it to a common GGUF type (F16, Q8_0, Q4_K, ...)")
    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
    if dims[0] % block:
        fail(c.path, f"tensor {name[:80]!r} has rows of {dims[0]}, not a multiple of its "
                      f"{GGMLQuantizationType(ttype).name} block of {block}")
    numel = 1
    for d in dims:
        numel *= d
    return {"name": name, "dims": dims, "type": ttype, "offset": offset, "numel": numel,
            "nbytes": numel // block * type_size}


def _check_tensor_data(path, tensors: list, data_offset: int, size: int, align: int) -> None:
    seen, end, prev = set(), 0, None
    data_size = size - data_offset
    for t in sorted(tensors, key=lambda t: t["offset"]):
        name = t["name"][:80]
        if t["name"] in seen:
            fail(path, f"has tensor {name!r} twice")
        seen.add(t["name"])
        if t["offset"] % align:
            fail(path, f"tensor {name!r} starts at offset {t['offset']}, not a multiple of the alignment {align}")
        if t["offset"] + t["nbytes"] > data_size:
            fail(path, f"is truncated (tensor {name!r} ends at byte {data_offset + t['offset'] + t['nbytes']}, "
                        f"file has {size})", "re-download it")
        if t["offset"] < end:
            fail(path, f"tensors {prev!r} and {name!r} overlap")
        end, prev = t["offset"] + t["nbytes"], name


def check_gguf_config(path, info: dict) -> int:
    """Sizes transformers will build the model with (GGUF keys over the config class defaults)
    are sane; return the parameters they describe."""
    from transformers import AutoConfig
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    kv = info["kv"]
    arch = kv.get("general.architecture")
    if not isinstance(arch, str):
        fail(path, "has no general.architecture string", "re-download or re-convert it")
    mapping = GGUF_CONFIG_MAPPING.get(arch, {})
    try:
        cfg = AutoConfig.for_model(arch).to_dict()
    except (ValueError, KeyError):
        cfg = {"model_type": arch}  # transformers refuses the architecture later, with its own message
    names = {}
    for suffix, key in mapping.items():
        if key and f"{arch}.{suffix}" in kv:
            cfg[key] = kv[f"{arch}.{suffix}"]
            names[key] = f"{arch}.{suffix}"
    if "vocab_size" not in names and isinstance(kv.get("tokenizer.ggml.tokens"), int):
        cfg["vocab_size"] = kv["tokenizer.ggml.tokens"]
    cfg["tie_word_embeddings"] = all(t["name"] != "output.weight" for t in info["tensors"])
    check_sizes(path, cfg, names)
    if isinstance(cfg.get("num_key_value_heads"), list):
        cfg["num_key_value_heads"] = max(cfg["num_key_value_heads"], default=0)
    return config_params(cfg)
