"""Sizes as people write them: 24GB, 80 GiB, 512MB, 1.5e9."""
from __future__ import annotations

import re

from lowbit.errors import LowbitError

UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
         "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m[2].upper() if m else None
    if not m or unit not in UNITS:
        raise LowbitError(f"size {text!r} is not understood: write it like 24GB, 80GiB or 512MB")
    return int(float(m[1]) * UNITS[unit])
