"""A model directory's config and tokenizer, read through the installed transformers and checked
against the file, so that no version difference silently changes what the model computes.

transformers 4.57 does not read the `rope_parameters` of a config written by transformers 5 and
would fall back to its default rope_theta; transformers 5 reads 4.x's `rope_theta`. Whatever
the version, `load_config` returns a config that computes with the file's RoPE settings, head
dimension and embedding tying, or raises a one-line error naming the difference.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from lowbit.compat import rope_of_config, rope_of_file, set_rope
from lowbit.errors import LowbitError

log = logging.getLogger(__name__)
# files one of which a tokenizer needs; without any, the directory has no tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")


def read_raw_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise LowbitError(f"{path / 'config.json'} is not valid JSON ({e.msg}, line {e.lineno}): "
                          "repair or re-download the model") from None


def _rope_differences(file_rope: dict, used: dict) -> list[str]:
    diffs = []
    for key, want in file_rope.items():
        got = used.get(key)
        if isinstance(want, (int, float)) and isinstance(got, (int, float)) and not isinstance(want, bool):
            if abs(float(want) - float(got)) > 1e-9 * max(1.0, abs(float(want))):
                diffs.append(f"{key} {want} in the file, {got} in use")
        elif key == "rope_type" and (got or "default") != (want or "default"):
            diffs.append(f"rope_type {want!r} in the file, {got!r} in use")
    return diffs


def check_config(config, raw: dict, path: Path) -> None:
    """One-line error if what the model will compute with differs from what config.json says."""
    problems = []
    file_rope = rope_of_file(raw)
    if file_rope is not None:
        problems += _rope_differences(file_rope, rope_of_config(config))
    if raw.get("head_dim") is not None and getattr(config, "head_dim", raw["head_dim"]) != raw["head_dim"]:
        problems.append(f"head_dim {raw['head_dim']} in the file, {config.head_dim} in use")
    if "tie_word_embeddings" in raw and bool(getattr(config, "tie_word_embeddings", raw["tie_word_embeddings"])) \
            != bool(raw["tie_word_embeddings"]):
        problems.append(f"tie_word_embeddings {raw['tie_word_embeddings']} in the file, "
                        f"{config.tie_word_embeddings} in use")
    if problems:
        import transformers
        raise LowbitError(f"{path / 'config.json'} is not computed as written by transformers "
                          f"{transformers.__version__} ({'; '.join(problems)}): upgrade transformers "
                          "(pip install -U 'transformers<6') or fix the config")


def load_config(path: Path, raw: dict | None = None):
    """The installed transformers' config for a model directory, carrying every RoPE setting of
    the file (either version's layout) and checked against it."""
    from transformers import AutoConfig

    raw = read_raw_config(path) if raw is None else raw
    config = AutoConfig.from_pretrained(str(path))
    file_rope = rope_of_file(raw)
    if file_rope is not None and _rope_differences(file_rope, rope_of_config(config)):
        # a layout this transformers does not read (5's rope_parameters under 4.57): carry it over
        log.info("RoPE settings %s taken from %s", file_rope, path / "config.json")
        set_rope(config, file_rope)
    check_config(config, raw, path)
    return config


def has_tokenizer(path: Path) -> bool:
    return any((Path(path) / f).is_file() for f in TOKENIZER_FILES)


def load_tokenizer(path: Path):
    """The directory's tokenizer, or None when it has no tokenizer files. A tokenizer.json saved by
    another transformers version (5's TokenizersBackend under 4.57) is read with the fast class."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not has_tokenizer(path):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (ValueError, OSError, TypeError, AttributeError, KeyError) as e:
        if not (path / "tokenizer.json").is_file():
            raise LowbitError(f"cannot read the tokenizer in {path} ({str(e).splitlines()[0][:200]}): "
                              "give one with --tokenizer DIR") from None
        return _fast_tokenizer(path)


def _fast_tokenizer(path: Path):
    from transformers import PreTrainedTokenizerFast

    cfg = {}
    if (path / "tokenizer_config.json").is_file():
        cfg = json.loads((path / "tokenizer_config.json").read_text())
    special = {k: v for k, v in cfg.items()
               if k in ("bos_token", "eos_token", "unk_token", "pad_token") and isinstance(v, str)}
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), **special)
    if (path / "chat_template.jinja").is_file():
        tok.chat_template = (path / "chat_template.jinja").read_text()
    return tok


def missing_tokenizer(source: str, why: str) -> LowbitError:
    return LowbitError(f"{source} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...), which {why} "
                       "needs: pass --tokenizer DIR (the base model's directory), or copy them into the model")
