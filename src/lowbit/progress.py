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
        self._stages: dict[str, list] = {}  # stage -> [start time, first step, last step shown]

    def __call__(self, stage: str, done: int, total: int) -> None:
        """The first call of a stage starts its clock (lowbit announces each stage with the step
        it starts at: 0, or where a resumed run continues); later calls print a line."""
        now = time.perf_counter()
        if self.then is not None:
            self.then(stage, done, total)
        st = self._stages.get(stage)
        if st is None or done < st[2]:  # a new stage, or a new pass of it
            self._stages[stage] = [now, done, done]
            if done < total:
                return
            st = self._stages[stage]
        start, first, last = st
        step = 1 if total <= 40 else max(1, total // 10)
        if done == last and done != first or (done != total and done - last < step):
            return
        st[2] = done
        elapsed = now - start
        line = f"{stage}: {done}/{total} ({100 * done / max(total, 1):.0f}%), {_seconds(elapsed)} elapsed"
        if first < done < total:
            line += f", about {_seconds(elapsed / (done - first) * (total - done))} left"
        self.emit(line)


def logging_progress(callback: Progress | None = None) -> Progress:
    """The Python API's default: lines on the `lowbit.progress` logger at INFO (then `callback`)."""
    return LineProgress(lambda line: log.info(line), then=callback)
