"""Real text for calibration and evaluation, and any user file.

Default calibration: equal parts of Wikipedia, Gutenberg books and the Debian handbook
(calibration/corpora.py), so that the statistics GPTQ and AWQ fit are not one domain's.
Default evaluation: the held-out Wikipedia paragraphs (every 5th); `--data code` / `--data
legal` evaluate on domains no default calibration contains."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from lowbit.calibration import corpora
from lowbit.errors import LowbitError
from lowbit.memory import release_free_memory

log = logging.getLogger(__name__)


def default_text(split: str) -> str:
    """The held-out Wikipedia text (eval) or Wikipedia's calibration part (calib)."""
    return corpora.split("wiki", split)


def default_calibration() -> tuple[list[str], list[str]]:
    """(texts, names) of the default calibration mix; a source this machine cannot fetch is
    left out with a warning (the run records the names it used)."""
    texts, names = [], []
    for name in corpora.CALIBRATION_MIX:
        try:
            texts.append(corpora.split(name, "calib"))
            names.append(name)
        except LowbitError as e:
            if name == "wiki":
                raise
            log.warning("calibrating without %s: %s", name, e)
    return texts, names


def load_texts(source: str | Path | None, split: str) -> tuple[list[str], str]:
    """(texts, what they are): a file, named corpora joined by '+' (wiki, gutenberg, handbook,
    code, legal), or the default (the calibration mix; the Wikipedia eval split). Several
    texts calibrate in equal parts."""
    if source is None:
        if split == "eval":
            return [default_text("eval")], "default (wiki-offline, eval split)"
        texts, names = default_calibration()
        return texts, "default mix (" + "+".join(names) + ", calib splits)"
    if not Path(source).exists():
        if corpora.is_corpus_name(str(source)):
            names = str(source).split("+")
            return [corpora.split(n, split) for n in names], str(source)  # the name replays (recipes)
        if not any(c in str(source) for c in "/\\."):  # a name, not a path: say which names exist
            bad = next(n for n in str(source).split("+") if n not in corpora.SOURCES)
            raise LowbitError(f"unknown text {bad!r}: name one of {', '.join(corpora.SOURCES)} "
                              "(joined by +), or give a file path")
    return [read_text_file(source)], str(source)


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


def load_text(source: str | Path | None, split: str) -> str:
    return "\n\n".join(load_texts(source, split)[0])


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """All token ids of the text (1-D), without special tokens, as one stream."""
    import transformers
    transformers.logging.set_verbosity_error()  # "sequence longer than max length" is expected
    return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]


def calibration_samples(tokenizer, text: str | list[str], nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """nsamples random windows of seqlen tokens (N, T), reproducible from the seed. Several
    texts share the windows equally (window i from text i mod k), whatever their lengths."""
    texts = [text] if isinstance(text, str) else list(text)
    streams = []
    for t in texts:
        ids = tokenize(tokenizer, t)
        release_free_memory()  # the tokenizer's working memory (0.4 GB for the Wikipedia text)
        if len(ids) <= seqlen:
            raise LowbitError(f"calibration text has {len(ids)} tokens, fewer than --seqlen {seqlen}: "
                              "give a longer --calib file or a smaller --seqlen")
        streams.append(ids)
    g = torch.Generator().manual_seed(seed)
    k = len(streams)
    per_text = []
    for j, ids in enumerate(streams):
        starts = torch.randint(0, len(ids) - seqlen, (len(range(j, nsamples, k)),), generator=g)
        per_text.append([ids[s:s + seqlen] for s in starts.tolist()])
    return torch.stack([per_text[i % k][i // k] for i in range(nsamples)])
