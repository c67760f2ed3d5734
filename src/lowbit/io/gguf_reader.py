"""Read a GGUF file (any tensor type gguf-py dequantizes: F32/F16/BF16, legacy, k-quants,
i-quants) into a float HF model and its tokenizer.

The header is walked once with bounds checks (lowbit.io.gguf_check) before gguf-py maps the
file, so a damaged or hostile file fails with one line instead of a huge allocation or a numpy error.
"""
from __future__ import annotations

import logging
from pathlib import Path

import gguf
import numpy as np
import torch

from lowbit.errors import LowbitError
from lowbit.io.gguf_names import gguf_names, qk_heads, unpermute_qk

log = logging.getLogger(__name__)
_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}  # GGUF arch -> HF model_type


def check_header(path: Path) -> None:
    """Magic, key/values and tensor infos walked with every count and length bounded by the file
    size, before gguf-py maps it (lowbit.io.gguf_check, shared with the other readers)."""
    from lowbit.io.gguf_check import check_gguf

    check_gguf(path)


def open_gguf(path) -> gguf.GGUFReader:
    """gguf-py's reader on a file whose header passed check_header."""
    path = Path(path)
    if not path.is_file():
        raise LowbitError(f"GGUF file {path} does not exist: check the path")
    check_header(path)
    try:
        return gguf.GGUFReader(path)
    except (ValueError, KeyError, IndexError) as e:
        raise LowbitError(f"{path} is not a valid GGUF file ({str(e)[:200]}): re-download or re-export it") from None


def _meta(r: gguf.GGUFReader, key: str, default=None):
    f = r.fields.get(key)
    return default if f is None else f.contents()


def gguf_config(r: gguf.GGUFReader, path: Path):
    """The HF config a GGUF's metadata describes."""
    from transformers import AutoConfig

    arch = _meta(r, "general.architecture")
    if arch not in _MODEL_TYPE:
        raise LowbitError(f"{path} holds a {arch!r} model: lowbit reads GGUF architectures "
                          f"{', '.join(sorted(_MODEL_TYPE))}")
    tensors = {t.name for t in r.tensors}

    def need(key):
        v = _meta(r, f"{arch}.{key}")
        if v is None:
            raise LowbitError(f"{path} lacks the key {arch}.{key}: the file is incomplete, re-export it")
        return v

    n_head = need("attention.head_count")
    vocab = _meta(r, f"{arch}.vocab_size") or len(r.fields["tokenizer.ggml.tokens"].data)
    kw = dict(vocab_size=int(vocab), hidden_size=need("embedding_length"),
              intermediate_size=need("feed_forward_length"), num_hidden_layers=need("block_count"),
              num_attention_heads=n_head,
              num_key_value_heads=_meta(r, f"{arch}.attention.head_count_kv", n_head),
              max_position_embeddings=_meta(r, f"{arch}.context_length", 2048),
              rms_norm_eps=float(_meta(r, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
              rope_theta=float(_meta(r, f"{arch}.rope.freq_base", 10000.0)),
              tie_word_embeddings="output.weight" not in tensors,
              bos_token_id=_meta(r, "tokenizer.ggml.bos_token_id"),
              eos_token_id=_meta(r, "tokenizer.ggml.eos_token_id"),
              pad_token_id=_meta(r, "tokenizer.ggml.padding_token_id"))
    if (head_dim := _meta(r, f"{arch}.attention.key_length")) is not None:
        kw["head_dim"] = head_dim
    if arch == "llama":
        kw["attention_bias"] = "blk.0.attn_q.bias" in tensors
    scaling = _meta(r, f"{arch}.rope.scaling.type")
    if scaling in ("linear", "yarn"):
        kw["rope_scaling"] = {"rope_type": scaling, "factor": _meta(r, f"{arch}.rope.scaling.factor")}
        if scaling == "yarn":
            kw["rope_scaling"]["original_max_position_embeddings"] = _meta(
                r, f"{arch}.rope.scaling.original_context_length")
    if "rope_freqs.weight" in tensors:
        log.warning("%s: llama3 RoPE factors (rope_freqs) are not read back; long contexts will differ", path)
    return AutoConfig.for_model(_MODEL_TYPE[arch], **kw)


def _one_line(e: Exception, limit: int = 120) -> str:
    """A library's error text for a one-line message (the tokenizers library's span lines)."""
    return " ".join(str(e).split())[:limit]


def read_gguf(path, dtype=torch.float32, with_tokenizer: bool = True):
    """(float HF model in eval mode, tokenizer or None) from a GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    r = open_gguf(path)
    try:
        config = gguf_config(r, path)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise LowbitError(f"{path} has damaged model metadata ({_one_line(e)}): re-download or re-export it") from None
    from lowbit.compat import no_init_weights

    with no_init_weights():  # every weight is overwritten below (missing ones raise)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = model.state_dict()
    arch = _meta(r, "general.architecture")
    names = {g: hf for hf, g in gguf_names(config.model_type, state, config.num_hidden_layers).items()}
    if config.tie_word_embeddings:
        names.pop("output.weight", None)
    loaded = set()
    for t in r.tensors:
        if t.name == "rope_freqs.weight":
            continue
        hf = names.get(t.name)
        if hf is None:
            raise LowbitError(f"{path} has tensor {t.name} that a {arch} model does not: "
                              "the file is of another model variant")
        try:
            with np.errstate(all="ignore"):
                W = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
        except NotImplementedError:
            raise LowbitError(f"{path}: tensor {t.name} is {t.tensor_type.name}, which gguf-py cannot dequantize: "
                              "re-export the file with another type (e.g. Q8_0 or Q4_K_M)") from None
        if not np.isfinite(W).all():
            raise LowbitError(f"weight {t.name} in {path} contains NaN or Inf: the file is damaged, "
                              "re-download or re-export it")
        heads = qk_heads(arch, t.name, config.num_attention_heads, config.num_key_value_heads)
        if heads is not None:
            W = unpermute_qk(W, heads)
        if tuple(W.shape) != tuple(state[hf].shape):
            raise LowbitError(f"{path}: tensor {t.name} has shape {W.shape}, the metadata implies "
                              f"{tuple(state[hf].shape)}: the file is inconsistent, re-export it")
        with torch.no_grad():
            state[hf].copy_(torch.from_numpy(np.array(W, dtype=np.float32)))
        loaded.add(hf)
    missing = [hf for hf in names.values() if hf not in loaded]
    if missing:
        raise LowbitError(f"{path} lacks tensor {missing[0]}: the file is incomplete, re-export it")
    model.tie_weights()
    tokenizer = None
    if with_tokenizer:
        try:
            tokenizer = gguf_tokenizer(r)
        except Exception as e:  # the tokenizers library raises plain Exception on a bad vocabulary
            raise LowbitError(f"{path} has a damaged vocabulary ({_one_line(e)}): re-download or re-export it") from None
        if tokenizer is None:  # other vocabularies: transformers' converter (slower, sometimes lossy)
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.eval(), tokenizer


def gguf_facts(path) -> dict:
    """What a GGUF file says of itself: its llama.cpp file type ("Q4_K_M"), how many tensors of
    each GGML type it holds, and what lowbit recorded of its making (lowbit.base_model,
    lowbit.spec, lowbit.calibration, lowbit.recipe), so eval finds the base to compare with."""
    import json

    r = open_gguf(path)
    ftype = _meta(r, "general.file_type")
    try:
        ftype_name = gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_") if ftype is not None else None
    except ValueError:
        ftype_name = str(ftype)
    types: dict[str, int] = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    facts = {"gguf_type": ftype_name, "tensor_types": dict(sorted(types.items()))}
    for key in ("base_model", "spec", "calibration", "recipe"):
        value = _meta(r, f"lowbit.{key}")
        if value is not None:
            facts[key] = json.loads(value) if key in ("spec", "calibration") else value
    return facts


_DIGITS_FIRST = {"smollm": True, "gpt-2": False}  # llama.cpp pre-tokenizers that are GPT-2's regex (+ digits)


def gguf_tokenizer(r: gguf.GGUFReader):
    """An HF fast tokenizer that splits text as llama.cpp does, for byte-level BPE ("gpt2")
    vocabularies with the GPT-2 pre-tokenizer; None for others. Flags (add_bos) as the file says."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = _meta(r, "tokenizer.ggml.pre", "default")
    if _meta(r, "tokenizer.ggml.model") != "gpt2" or pre not in _DIGITS_FIRST:
        return None
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in r.fields["tokenizer.ggml.merges"].contents()]
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                        if _DIGITS_FIRST[pre] else byte_level)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty == gguf.TokenType.CONTROL])
    tk.add_tokens([AddedToken(t, normalized=False) for t, ty in zip(tokens, types) if ty == gguf.TokenType.USER_DEFINED])
    ids = {k: _meta(r, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}
    tok = {k: tokens[i] if i is not None and 0 <= i < len(tokens) else None for k, i in ids.items()}
    if _meta(r, "tokenizer.ggml.add_bos_token", False) and tok["bos"] is not None:
        tk.post_processor = processors.TemplateProcessing(single=f"{tok['bos']} $A", pair=f"{tok['bos']} $A $B",
                                                          special_tokens=[(tok["bos"], ids["bos"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=tok["bos"], eos_token=tok["eos"],
                                   unk_token=tok["unknown"], pad_token=tok["padding"],
                                   chat_template=_meta(r, "tokenizer.chat_template"))
