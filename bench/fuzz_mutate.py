"""Case i of the reader fuzz: a copy of one valid input (others symlinked) with one file
damaged. Everything derives from random.Random(f"{seed}:{i}"), so a case is reproducible."""
from __future__ import annotations

import json
import random
import struct
from pathlib import Path

KINDS = ("safetensors", "quant-safetensors", "config", "quant-config", "gguf")
WEIGHTS = (3, 1.5, 2, 1, 3.5)
BIG = [0, 1, 2, 3, 4, 7, 8, 9, 12, 13, 31, 32, 33, 255, 256, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
       2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
ODD = [0, -1, 1, 2, 3, 10**12, 2**31, 2**63, 10**30, 1.5, -0.0, "abc", "", None, True, False, [], {}, [1, 2],
       {"a": 1}, float("nan"), float("inf"), 2**17 + 1, 8192]


def make_case(i: int, seed: int, corpus: dict, case: Path):
    rng = random.Random(f"{seed}:{i}")
    kind = rng.choices(KINDS, WEIGHTS)[0]
    case.mkdir(parents=True)
    if kind == "gguf":
        data = Path(corpus["gguf"]).read_bytes()
        data, how = _gguf(data, rng)
        target = case / "model.gguf"
        target.write_bytes(data)
        return target, kind, how
    src = Path(corpus["quant" if kind.startswith("quant") else "hf"])
    victim = "config.json" if kind.endswith("config") else "model.safetensors"
    for f in src.iterdir():
        if f.name != victim:
            (case / f.name).symlink_to(f)
    data = (src / victim).read_bytes()
    data, how = (_config if victim == "config.json" else _safetensors)(data, rng)
    (case / victim).write_bytes(data)
    return case, kind, how


# ---------------------------------------------------------------- any bytes

def _bytes(data: bytes, rng: random.Random, hot: int) -> tuple[bytes, str]:
    """Blind damage; `hot` bytes at the start (the header) get most of it."""
    b = bytearray(data)
    pos = lambda: rng.randrange(min(hot, len(b))) if rng.random() < 0.75 and b else rng.randrange(max(len(b), 1))
    op = rng.choice(["flip", "flip", "set", "truncate", "truncate", "extend", "cut", "insert", "random", "empty"])
    if op == "flip" and b:
        k = rng.choice([1, 2, 4, 8, 32])
        for _ in range(k):
            p = pos()
            b[p] ^= 1 << rng.randrange(8)
        return bytes(b), f"flip {k} bits"
    if op == "set" and b:
        for _ in range(rng.randint(1, 4)):
            b[pos()] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        return bytes(b), "set bytes"
    if op == "truncate":
        n = pos()
        return bytes(b[:n]), f"truncate at {n}"
    if op == "extend":
        return bytes(b) + rng.randbytes(rng.randint(1, 4096)), "append junk"
    if op == "cut" and b:
        p = pos()
        n = rng.randint(1, 64)
        return bytes(b[:p] + b[p + n:]), f"cut {n} bytes at {p}"
    if op == "insert":
        p = pos() if b else 0
        return bytes(b[:p] + rng.randbytes(rng.randint(1, 64)) + b[p:]), f"insert at {p}"
    if op == "random":
        return bytes(b[:rng.choice([0, 4, 8])]) + rng.randbytes(rng.randint(0, 4096)), "random bytes"
    return b"", "empty file"


# ---------------------------------------------------------------- safetensors

def _safetensors(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    (n,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    r = rng.random()
    if r < 0.35:
        return _bytes(data, rng, 8 + n)
    if r < 0.5:
        v = rng.choice(BIG + [n - 1, n + 1, len(data) - 8, len(data) - 7, 100 * 2**20 + 1])
        return struct.pack("<Q", v % 2**64) + data[8:], f"header length {v}"
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    e = header[name]
    op = rng.choice(["dtype", "shape", "offsets", "offsets", "overlap", "drop", "dup", "extra", "meta",
                     "not-object", "deep", "utf8", "nan-data"])
    if op == "dtype":
        e["dtype"] = rng.choice(["F16", "I64", "BOOL", "U8", "F64", "F4", "Q4", "", None, 5, "f32",
                                 "F8_E8M0", "C64", "BF16"])
    elif op == "shape":
        e["shape"] = rng.choice([[2**62, 2**62], [-1] + e["shape"][1:], [1.5], "x", [], e["shape"] + [1],
                                 [d * 2 for d in e["shape"]], [0] + e["shape"], [1] * 20, [2**64], [True]])
    elif op == "offsets":
        b, s = e["data_offsets"]
        e["data_offsets"] = rng.choice([[b, s + 1], [s, b], [0, s], [b, 2**64], [-1, s], [b + 1, s + 1],
                                        [b, len(body) + 8], "x", [b], [b, s, s], [b * 1.0, s]])
    elif op == "overlap":
        other = header[rng.choice(names)]
        e["data_offsets"] = list(other["data_offsets"])
    elif op == "drop":
        del header[name]
    elif op == "dup":
        header[name + ".copy"] = dict(e)
    elif op == "extra":
        e["extra"] = 1
    elif op == "meta":
        header["__metadata__"] = rng.choice([{"a": 1}, [], "x", {"a": {"b": "c"}}, None])
    elif op == "not-object":
        header = rng.choice([[], "x", 1, None, [header]])
    elif op == "deep":
        raw = ("[" * 100000 + "]" * 100000).encode()
        return struct.pack("<Q", len(raw)) + raw + body, op
    elif op == "utf8":
        raw = json.dumps(header).encode().replace(b'"F32"', b'"F\xff2"', 1)
        return struct.pack("<Q", len(raw)) + raw + body, op
    elif op == "nan-data":  # well-formed file with damaged values: must load
        body = bytes(b"\x00\x00\xc0\x7f" * (len(body) // 4) + body[len(body) // 4 * 4:])
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body, f"{op} {name}"


# ---------------------------------------------------------------- config.json

CONFIG_KEYS = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "vocab_size", "max_position_embeddings", "head_dim", "rms_norm_eps",
               "rope_theta", "tie_word_embeddings", "torch_dtype", "dtype", "model_type", "architectures",
               "rope_scaling", "quantization_config", "hidden_act", "attention_bias", "bos_token_id",
               "pad_token_id", "sliding_window", "mlp_bias", "initializer_range", "rope_parameters"]


def _config(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    cfg = json.loads(data)
    r = rng.random()
    if r < 0.25:
        return _bytes(data, rng, len(data))
    keys = CONFIG_KEYS + list(cfg)
    key = rng.choice(keys)
    if r < 0.35 and key in cfg:
        del cfg[key]
        return json.dumps(cfg).encode(), f"delete {key}"
    if r < 0.5 and "quantization_config" in cfg:
        return _quant_config(cfg, rng)
    old = cfg.get(key)
    choices = ODD + ["gpt2", "opt", "qwen3", "nope", "llama"]
    if isinstance(old, int) and not isinstance(old, bool):
        choices += [old * 2, old + 1, old // 2, old * 64, old * 1000]
    cfg[key] = rng.choice(choices)
    return json.dumps(cfg).encode(), f"{key} = {str(cfg[key])[:30]}"


def _quant_config(cfg: dict, rng: random.Random) -> tuple[bytes, str]:
    q = cfg["quantization_config"]
    group = next(iter(q["config_groups"].values()))
    w = group["weights"]
    field, value = rng.choice([
        ("num_bits", rng.choice([0, 1, 3, 8, 9, 33, -4, "4", None])),
        ("group_size", rng.choice([0, -1, 1, 7, 64, 2**40, None, "x"])),
        ("strategy", rng.choice(["tensor", "channel", "block", "x", None])),
        ("symmetric", rng.choice([False, None, "x"])),
        ("targets", rng.choice([[], ["Linear"], "x", None, ["re:.*"]])),
        ("format", rng.choice(["dense", "int-quantized", "x", None])),
        ("config_groups", rng.choice([{}, [], None, "x"])),
    ])
    if field == "targets":
        group["targets"] = value
    elif field == "format":
        q["format"] = value
    elif field == "config_groups":
        q["config_groups"] = value
    else:
        w[field] = value
    return json.dumps(cfg).encode(), f"quantization_config {field} = {value}"


# ---------------------------------------------------------------- GGUF

def gguf_slots(data: bytes) -> list[tuple[str, int, int]]:
    """(label, offset, width) of every length, count, type, dim, offset and scalar value."""
    slots = [("version", 4, 4), ("tensor count", 8, 8), ("kv count", 16, 8)]
    pos, (n_t, n_kv) = 24, struct.unpack_from("<QQ", data, 8)
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(label):
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        slots.append((f"{label} length", pos, 8))
        s = data[pos + 8:pos + 8 + n].decode()
        pos += 8 + n
        return s

    for _ in range(n_kv):
        key = string("key")
        (t,) = struct.unpack_from("<I", data, pos)
        slots.append((f"{key} type", pos, 4))
        pos += 4
        if t == 8:
            string(f"{key} string")
        elif t in sizes:
            slots.append((f"{key} value", pos, sizes[t]))
            pos += sizes[t]
        else:
            et, cnt = struct.unpack_from("<IQ", data, pos)
            slots += [(f"{key} element type", pos, 4), (f"{key} count", pos + 4, 8)]
            pos += 12
            for j in range(cnt):
                if et == 8:
                    (n,) = struct.unpack_from("<Q", data, pos)
                    if j < 3:
                        slots.append((f"{key}[{j}] length", pos, 8))
                    pos += 8 + n
                else:
                    pos += sizes[et]
    for _ in range(n_t):
        name = string("tensor name")
        (nd,) = struct.unpack_from("<I", data, pos)
        slots.append((f"{name} n_dims", pos, 4))
        slots += [(f"{name} dim {j}", pos + 4 + 8 * j, 8) for j in range(nd)]
        pos += 4 + 8 * nd
        slots += [(f"{name} type", pos, 4), (f"{name} offset", pos + 4, 8)]
        pos += 12
    return slots


def _gguf(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    slots = gguf_slots(data)
    header_end = max(o + w for _, o, w in slots)
    if rng.random() < 0.35:
        return _bytes(data, rng, header_end)
    b = bytearray(data)
    label, off, width = rng.choice(slots)
    old = int.from_bytes(b[off:off + width], "little")
    if label.endswith("offset") and rng.random() < 0.4:  # overlap another tensor or misalign
        others = [int.from_bytes(b[o:o + 8], "little") for lab, o, _ in slots if lab.endswith("offset")]
        v = rng.choice(others) + rng.choice([0, 0, 1, 32])
    else:
        v = rng.choice(BIG + [old + 1, old - 1, old * 2, old + 2**32, len(data), rng.getrandbits(8 * width)])
    v %= 2 ** (8 * width)
    b[off:off + width] = v.to_bytes(width, "little")
    return bytes(b), f"{label} {old} -> {v}"
