"""Progress reports: progress(stage, done, total) callbacks for logs, terminals and the Python API.

A terminal gets rich's bars (cli.py); anything else (a log file, CI, a notebook, the Python API)
gets one line per step, or per tenth of a stage when it has many steps, with the elapsed time
and an estimate of what is left, so a run writing to a file is never silent for minutes.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Callable

Progress = Callable[[str, int, int], None]
log = logging.getLogger("lowbit.progress")


def _seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class LineProgress:
    """One line per step (per 10% when a stage has more than 40 steps) through `emit`."""

    def __init__(self, emit: Callable[[str], None] | None = None, then: Progress | None = None):
        self.emit = emit or (lambda line: print(line, file=sys.stderr, flush=True))
        self.then = then  # a user's callback, called for every step
        self._start: dict[str, float] = {}
        self._last: dict[str, int | None] = {}  # the step last shown, per stage

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        last = self._last.get(stage)
        if stage not in self._start or (last is not None and done < last):  # a new pass of the stage
            self._start[stage], last = now, None
        if self.then is not None:
            self.then(stage, done, total)
        step = 1 if total <= 40 else max(1, total // 10)
        if last == done or (last is not None and done != total and done - last < step):
            return
        self._last[stage] = done
        elapsed = now - self._start[stage]
        line = f"{stage}: {done}/{total} ({100 * done / max(total, 1):.0f}%), {_seconds(elapsed)} elapsed"
        if 0 < done < total:
            line += f", about {_seconds(elapsed / done * (total - done))} left"
        self.emit(line)


def logging_progress(callback: Progress | None = None) -> Progress:
    """The Python API's default: lines on the `lowbit.progress` logger at INFO (then `callback`)."""
    return LineProgress(lambda line: log.info(line), then=callback)
