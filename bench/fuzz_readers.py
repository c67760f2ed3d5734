"""Fuzz lowbit's readers with hostile files: only a clean load or a LowbitError is acceptable.

    python bench/fuzz_readers.py --n 10000 [--seed 0] [--timeout 5] [--rss-mb 500]
    FUZZ_NO_CHECKS=1 python bench/fuzz_readers.py --n 2000   # what the file checks prevent

Builds valid tiny inputs (a float safetensors directory, a compressed-tensors directory lowbit
wrote, a GGUF from gguf's writer with F32 and Q8_0 tensors, their config.json), then derives
case i from seed and i alone (reproducible: `--only I` reruns one case) by bit flips,
truncation, random bytes, and structured damage (huge lengths, counts and dims, overlapping
or out-of-file offsets, wrong dtypes and types, absurd hyperparameters). Each case runs the
full read path, lowbit.io.load.load_model, in a long-lived worker process; the parent kills
the worker on a hang (> --timeout s) or RSS growth (> --rss-mb) and records the case.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_mutate import KINDS, make_case  # noqa: E402

ACCEPT = ("ok", "LowbitError")


def _accepted(outcome: str) -> bool:
    return outcome.startswith(ACCEPT)


# ---------------------------------------------------------------- worker

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _load(path: str) -> str:
    from lowbit.errors import LowbitError
    from lowbit.io.load import load_model
    try:
        load_model(path)
        return "ok"
    except LowbitError as e:  # a library error on a file the checks passed, wrapped by reading()
        wrapped = str(e).startswith("cannot read ") and " (" in str(e)
        return f"LowbitError (wrapped {str(e).split(' (', 1)[1][:200]}" if wrapped else "LowbitError"
    except BaseException as e:  # noqa: BLE001  (anything else is the finding we look for)
        return f"{type(e).__name__}: {str(e).strip()[:160]}"


def worker(corpus_dir: str, seed: int) -> None:
    """Read case numbers on stdin, answer one JSON line per case on stdout."""
    import logging
    import warnings

    import torch
    import transformers
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    corpus = json.loads((Path(corpus_dir) / "corpus.json").read_text())
    if os.environ.get("FUZZ_NO_CHECKS"):  # baseline: only the reading() wrapper, no file checks
        from lowbit.io import compressed_tensors, file_checks
        for mod, name in [(file_checks, "check_model_dir"), (file_checks, "check_model_file"),
                          (compressed_tensors, "check_safetensors"), (compressed_tensors, "check_packed")]:
            setattr(mod, name, lambda *a, **k: None)
    out = sys.stdout
    sys.stdout = sys.stderr  # libraries must not corrupt the protocol
    for base in corpus.values():  # warm up imports and caches before the clock runs
        assert _load(base) == "ok", base
    out.write("ready\n")
    out.flush()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        for line in sys.stdin:
            i = int(line)
            case = Path(tmp) / f"c{i}"
            target, kind, mutation = make_case(i, seed, corpus, case)
            before = _rss()
            peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            t0 = time.perf_counter()
            outcome = _load(str(target))
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            grew = peak - before if peak > peak_before else 0
            out.write(json.dumps({"i": i, "kind": kind, "mutation": mutation, "outcome": outcome,
                                  "seconds": time.perf_counter() - t0, "rss_growth": grew}) + "\n")
            out.flush()
            subprocess.run(["rm", "-rf", str(case)], check=False)


# ---------------------------------------------------------------- parent

class Worker:
    def __init__(self, corpus_dir: Path, seed: int):
        self.p = subprocess.Popen([sys.executable, __file__, "--worker", str(corpus_dir), "--seed", str(seed)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True, bufsize=1)
        line = self.p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"fuzz worker failed to start (exit {self.p.poll()})")

    def rss(self) -> int:
        try:
            with open(f"/proc/{self.p.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def kill(self):
        self.p.kill()
        self.p.wait()


def _wait_line(w: Worker, timeout: float, rss_limit: int) -> tuple[str | None, str]:
    """The worker's answer, or (None, 'hang' | 'rss' | 'crash')."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(w.p.stdout, selectors.EVENT_READ)
    start_rss, t0 = w.rss(), time.monotonic()
    while time.monotonic() - t0 < timeout:
        if sel.select(0.02):
            line = w.p.stdout.readline()
            return (line, "") if line else (None, f"crash (exit {w.p.wait()})")
        if w.rss() - start_rss > rss_limit:
            return None, f"rss > {rss_limit >> 20} MB"
    return None, f"hang > {timeout:g} s"


def _describe(i: int, seed: int, workdir: Path) -> dict:
    """Kind and mutation of case i, when the worker died before saying."""
    corpus = json.loads((workdir / "corpus.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        _, kind, mutation = make_case(i, seed, corpus, Path(tmp) / "c")
    return {"kind": kind, "mutation": mutation}


def build_corpus(dirpath: Path) -> Path:
    from fuzz_corpus import build
    corpus = build(dirpath)
    (dirpath / "corpus.json").write_text(json.dumps({k: str(v) for k, v in corpus.items()}))
    return dirpath


def run(n: int, seed: int = 0, timeout: float = 5.0, rss_mb: int = 500, only: list[int] | None = None,
        workdir: Path | None = None, log=print, jsonl=None) -> dict:
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="fuzz-corpus-")
        workdir = Path(tmp.name)
    build_corpus(workdir)
    counts: Counter = Counter()
    by_kind: Counter = Counter()
    findings = []
    w = Worker(workdir, seed)
    t0 = time.perf_counter()
    cases = only if only is not None else range(n)
    for done, i in enumerate(cases):
        w.p.stdin.write(f"{i}\n")
        w.p.stdin.flush()
        line, problem = _wait_line(w, timeout, rss_mb << 20)
        if line is not None:
            r = json.loads(line)
            if r["rss_growth"] > rss_mb << 20:
                problem = f"rss grew {r['rss_growth'] >> 20} MB"
            outcome = problem or r["outcome"]
            by_kind[(r["kind"], outcome.split(" (")[0] if _accepted(outcome) else "finding")] += 1
        else:
            w.kill()
            r = {"i": i, **_describe(i, seed, workdir)}
            outcome = problem
            w = Worker(workdir, seed)
        key = outcome.split(":")[0] + ")" * ("(" in outcome) if _accepted(outcome) else \
            outcome.split(":")[0].split(" (")[0]
        if jsonl:
            jsonl.write(json.dumps({**r, "outcome": outcome}) + "\n")
        counts[key] += 1
        if not _accepted(outcome):
            findings.append({**r, "outcome": outcome})
            log(f"FINDING case {i} ({r['kind']}, {r['mutation']}): {outcome}")
        if (done + 1) % 500 == 0:
            log(f"{done + 1} cases, {time.perf_counter() - t0:.0f} s: {dict(counts)}")
    w.kill()
    if tmp is not None:
        tmp.cleanup()
    return {"cases": len(cases), "seconds": time.perf_counter() - t0, "counts": dict(counts),
            "by_kind": {f"{k}/{o}": v for (k, o), v in sorted(by_kind.items())}, "findings": findings}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--rss-mb", type=int, default=500)
    ap.add_argument("--only", type=int, nargs="*", help="rerun these case numbers")
    ap.add_argument("--jsonl", type=argparse.FileType("w"), help="write every case's outcome here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.seed)
    res = run(args.n, args.seed, args.timeout, args.rss_mb, args.only, jsonl=args.jsonl)
    print(f"\n{res['cases']} cases in {res['seconds']:.0f} s (seed {args.seed}); kinds: {', '.join(KINDS)}")
    for k, v in sorted(res["counts"].items(), key=lambda kv: -kv[1]):
        print(f"  {k:<40} {v}")
    print("by kind:", json.dumps(res["by_kind"], indent=1))
    print(f"findings: {len(res['findings'])}")
    for f in res["findings"]:
        print(f"  case {f['i']} {f['kind']} {f['mutation']}: {f['outcome']}")
    sys.exit(1 if res["findings"] else 0)


if __name__ == "__main__":
    main()
