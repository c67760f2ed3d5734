"""Running the command line in-process for tests: exit code, stdout and stderr of `lowbit ARGS`,
and the shape of a bad-input error."""
import os
import re
import sys
from pathlib import Path

from lowbit.cli import main

PROSE = ("The river rises in the northern hills and flows south through farmland, towns and "
         "forests before it reaches the sea. Its valley has been settled for thousands of years. ") * 80
# a `python -m lowbit.cli` child: tests/ first on its path, then the caller's PYTHONPATH (a
# checkout tested without installing it)
SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                            os.environ.get("PYTHONPATH")]))}
PROGRESS_LINE = re.compile(r"^lowbit: [a-z ]+: \d+/\d+ \(\d+%\)")


def run(argv, capsys):
    sys_argv = sys.argv
    sys.argv = ["lowbit", *argv]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = sys_argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code, err, *words):
    """Exit 2 and one error line (progress lines, which stderr gets when it is not a terminal,
    may come before it)."""
    assert code == 2, err
    lines = [l for l in err.strip().splitlines() if l.strip() and not PROGRESS_LINE.match(l)]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]


ERRORS_DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def documented_errors() -> list:
    """(row input, pattern of its message) for every row of docs/errors.md."""
    import re

    rows = []
    for line in ERRORS_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| ") else []
        if len(cells) != 2 or cells[0] in ("input", "---") or not cells[1].startswith("`"):
            continue
        message = cells[1].strip("`")
        parts = re.split(r"(\bX\b|\bOUT\b|\bN\b|\bM\b|\.\.\.)", message)
        rx = "".join({"X": r".+?", "OUT": r".+?", "N": r"[\d.]+", "M": r"[\d.]+", "...": r".*?"}.get(p)
                     or re.sub(r"\\?\d+(?:\\\.\d+)*", r"[\\d.]+", re.escape(p)) for p in parts)
        rows.append((cells[0], re.compile(rx)))
    return rows
