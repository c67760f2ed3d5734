"""Write an HF float model as a GGUF file that llama.cpp loads.

The container and metadata come from gguf-py's GGUFWriter; the tensor bytes from
lowbit.formats.ggml_tensor.round_ggml, or from `blocks` (bytes another method, e.g. GPTQ,
already chose on the grids plan_types() names). The file is written under a temporary
name beside the output and renamed at the end, so a failure leaves no partial file.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from lowbit import __version__
from lowbit.compat import rope_scaling, rope_theta
from lowbit.errors import LowbitError
from lowbit.formats import ggml_blocks
from lowbit.formats.ggml_tensor import GGMLTensor, round_ggml
from lowbit.io.atomic import check_output
from lowbit.io.gguf_mixes import parse_file_type, plan_types, row_bytes
from lowbit.io.gguf_names import gguf_arch, gguf_names, permute_qk, qk_heads
from lowbit.io.loaded import check_finite

log = logging.getLogger(__name__)
Blocks = dict[str, tuple[np.ndarray, T]]


def write_gguf(out_path, model, tokenizer, file_type: str = "Q4_K_M", blocks: Blocks | None = None,
               importance: dict[str, np.ndarray] | None = None, overwrite: bool = False,
               source_gguf: Path | None = None, tensor=None, metadata: dict | None = None) -> Path:
    """Write `model` (HF, float) as OUT_PATH in llama.cpp file type `file_type` ("Q4_K_M", "Q8_0", ...).

    blocks: {hf_name: (uint8 (rows, bytes_per_row) in HF row order, type)} used as is.
    importance: {hf_name: float (cols,)} passed to the block quantizer.
    source_gguf: a GGUF the model was loaded from; its tokenizer metadata is copied
    (exact tokens, merges, pre-tokenizer and flags, which an HF round trip may lose).
    tensor(hf_name) -> a float tensor or a GGMLTensor (exact blocks), asked for one at a time in
    the file's order (a layer-by-layer run reads them back from its layer store); default: the
    model's own tensors. metadata: {key: str} written as "lowbit.KEY" (base model, spec)."""
    out = Path(out_path)
    check_output(out, overwrite)
    ftype, _ = parse_file_type(file_type)
    cfg = model.config
    arch = gguf_arch(getattr(cfg, "model_type", None))
    blocks, importance = blocks or {}, importance or {}
    plan = plan_types(model, file_type, has_importance=bool(importance))
    names = gguf_names(cfg.model_type, plan, cfg.num_hidden_layers)
    unknown = set(blocks) - set(plan)
    if unknown:
        raise LowbitError(f"blocks name tensors the file does not hold ({sorted(unknown)[0]}): "
                          "key blocks by the HF names plan_types() returns")
    state = model.state_dict()  # shapes (meta tensors too); data through `tensor` when given
    get = tensor if tensor is not None else state.__getitem__

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"  # same directory: the rename is atomic
    try:
        w = gguf.GGUFWriter(tmp, arch)
        _add_model_metadata(w, model, arch, ftype)
        for key, value in (metadata or {}).items():
            w.add_string(f"lowbit.{key}", str(value))
        if source_gguf is not None:
            _copy_tokenizer(w, Path(source_gguf))
        else:
            _add_hf_tokenizer(w, tokenizer, cfg.vocab_size)
        # tensor infos first, then one tensor at a time: peak memory is one quantized tensor
        extra = _extra_tensors(cfg, arch)
        types = {hf: T(blocks[hf][1]) if hf in blocks else plan[hf] for hf in names}
        for hf in blocks:
            if types[hf] != plan[hf]:
                log.info("%s: using the given %s blocks where the mix asks for %s", hf, types[hf].name, plan[hf].name)
        for hf_name, g_name in names.items():
            _add_info(w, g_name, tuple(state[hf_name].shape), types[hf_name])
        for g_name, data in extra:
            _add_info(w, g_name, data.shape, T.F32)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        for hf_name, g_name in names.items():
            data, _ = _tensor_bytes(hf_name, get(hf_name), types[hf_name], blocks, importance, tuple(state[hf_name].shape))
            heads = qk_heads(arch, g_name, cfg.num_attention_heads, n_kv)
            w.write_tensor_data(permute_qk(data, heads) if heads is not None else data)
        for _, data in extra:
            w.write_tensor_data(data)
        w.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _add_info(w: gguf.GGUFWriter, name: str, shape: tuple, qtype: T) -> None:
    """Declare a tensor of HF shape (rows, cols) or (n,) stored as `qtype`."""
    rows, cols = (1, shape[0]) if len(shape) == 1 else shape
    nbytes = rows * row_bytes(qtype, cols)
    if qtype in (T.F32, T.F16):
        w.add_tensor_info(name, shape, np.dtype(np.float32 if qtype == T.F32 else np.float16), nbytes)
    else:
        w.add_tensor_info(name, (rows, row_bytes(qtype, cols)), np.dtype(np.uint8), nbytes, raw_dtype=qtype)


def _tensor_bytes(hf_name, tensor, qtype: T, blocks: Blocks, importance, shape: tuple):
    """(array, type): float32/float16 arrays for float types, uint8 rows for block types.
    tensor: a float tensor, or a GGMLTensor whose blocks are used as they are."""
    if isinstance(tensor, GGMLTensor) and T(tensor.qtype) not in ggml_blocks.FLOAT_TYPES:
        blocks = {hf_name: (tensor.blocks, tensor.qtype)}
    elif isinstance(tensor, GGMLTensor):
        tensor = tensor.dequantize()
    if hf_name in blocks:
        data, given = blocks[hf_name]
        given = T(given)
        if given != qtype:
            raise LowbitError(f"blocks for {hf_name} are {given.name}, the file declares {qtype.name}: re-quantize it")
        rows, cols = shape
        if data.dtype != np.uint8 or data.shape != (rows, row_bytes(given, cols)):
            raise LowbitError(f"blocks for {hf_name} have shape {data.shape} {data.dtype}, expected "
                              f"uint8 {(rows, row_bytes(given, cols))} for {given.name}: re-quantize that tensor")
        return np.ascontiguousarray(data), given
    check_finite(hf_name, tensor)
    if qtype in (T.F32, T.F16):
        W = tensor.detach().to(torch.float32).cpu().numpy()
        return (np.ascontiguousarray(W) if qtype == T.F32 else W.astype(np.float16)), qtype
    try:  # a block of rows at a time, from the tensor's own dtype (formats/ggml_tensor.round_ggml)
        q = round_ggml(tensor.detach().cpu(), qtype, importance.get(hf_name), values=False).blocks
    except NotImplementedError:
        raise LowbitError(f"no block quantizer for {qtype.name} yet ({hf_name}): "
                          "choose another GGUF file type (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, F16)") from None
    return q, qtype


def _add_model_metadata(w: gguf.GGUFWriter, model, arch: str, ftype) -> None:
    cfg = model.config
    n_head = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    w.add_type(gguf.GGUFType.MODEL)
    name = getattr(cfg, "name_or_path", "") or getattr(cfg, "_name_or_path", "")
    if name:
        w.add_name(Path(str(name)).name)
    w.add_quantized_by(f"lowbit {__version__}")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or n_head)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(rope_theta(cfg))
    if arch == "llama":
        w.add_vocab_size(cfg.vocab_size)
        w.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // n_head or arch == "qwen3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    _add_rope_scaling(w, rope_scaling(cfg))
    w.add_file_type(int(ftype))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_rope_scaling(w: gguf.GGUFWriter, rope: dict | None) -> None:
    if not rope:
        return
    kind, factor = rope.get("rope_type", rope.get("type")), rope.get("factor")
    if kind == "linear" and factor:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(factor)
    elif kind == "yarn" and factor:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(factor)
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    elif kind not in (None, "default", "llama3"):  # llama3 is a rope_freqs tensor (_extra_tensors)
        raise LowbitError(f"RoPE scaling {kind!r} cannot be written as GGUF yet: "
                          "lowbit writes linear, yarn and llama3 scaling")


def _extra_tensors(cfg, arch: str):
    """Llama 3 RoPE scaling is stored as per-frequency factors, the tensor rope_freqs."""
    rope = rope_scaling(cfg) or {}
    if arch != "llama" or rope.get("rope_type", rope.get("type")) != "llama3":
        return []
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    inv_freq = 1.0 / (rope_theta(cfg) ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    factor = rope.get("factor", 8.0)
    lo, hi = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    wavelen = 2 * np.pi / inv_freq
    smooth = (old_ctx / wavelen - lo) / (hi - lo)
    mid = 1 / ((1 - smooth) / factor + smooth)
    factors = np.where(wavelen < old_ctx / hi, 1.0, np.where(wavelen > old_ctx / lo, factor, mid))
    return [("rope_freqs.weight", factors.astype(np.float32))]


_COPIED = ("tokenizer.", "general.organization", "general.basename", "general.finetune", "general.size_label",
           "general.license", "general.languages")  # the vocabulary and who made the model, not how it was stored


def _copy_tokenizer(w: gguf.GGUFWriter, source: Path) -> None:
    from lowbit.io.gguf_reader import open_gguf

    r = open_gguf(source)
    for key, field in r.fields.items():
        if not key.startswith(_COPIED) or key in w.kv_data[0]:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), vtype, sub_type=sub)


def _pre_tokenizer_name(tok_json: dict) -> str:
    """llama.cpp's name for the pre-tokenizer, read from the tokenizer.json structure."""
    pre = json.dumps(tok_json.get("pre_tokenizer") or {})
    if '"Digits"' in pre and '"individual_digits": true' in pre and '"ByteLevel"' in pre:
        return "smollm"
    if "\\\\p{N}{1,3}" in pre:
        return "llama-bpe"
    if "[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}" in pre:
        return "qwen2"
    if '"Split"' not in pre and '"ByteLevel"' in pre:
        return "gpt-2"
    log.warning("unknown pre-tokenizer: llama.cpp will use its default (pass source_gguf to copy one)")
    return "default"


def _add_hf_tokenizer(w: gguf.GGUFWriter, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE tokenizer as llama.cpp's "gpt2" vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise LowbitError("the tokenizer is not a fast (tokenizer.json) tokenizer: "
                          "load the model with its tokenizer.json, or pass source_gguf")
    tok_json = json.loads(backend.to_str())
    if tok_json["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(tok_json.get("pre_tokenizer")):
        raise LowbitError("only byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM) convert to GGUF yet: "
                          "pass source_gguf= a GGUF of the same model to copy its tokenizer")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise LowbitError(f"the tokenizer has ids up to {max(vocab.values())} but the model only "
                          f"{vocab_size} embeddings: use the model's own tokenizer")
    by_id = {i: t for t, i in vocab.items()}
    added = {i: a for i, a in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            special = added[i].special or (by_id[i].startswith("<|") and by_id[i].endswith("|>"))
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre_tokenizer_name(tok_json))
    w.add_token_list(tokens)
    w.add_token_types(types)
    with tempfile.TemporaryDirectory() as td:  # SpecialVocab reads merges, special ids, flags, template
        tokenizer.save_pretrained(td)
        gguf.SpecialVocab(td, load_merges=True, n_vocab=vocab_size).add_to_gguf(w)
