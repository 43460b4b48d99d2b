"""The serving limits: ``max_batch`` (rows per continuous batch; an image is 2 rows when guided) and
``memory_budget`` (bytes the scheduler's batches and joins may use, or None for no limit), checked and parsed.

``memory_budget`` may be a number of bytes or a string with a unit: ``"20GiB"``, ``"512MiB"``, ``"1.5GB"``,
``"4096"`` (binary units are powers of 1024, decimal ones of 1000).
"""

from __future__ import annotations

import math
import re

from ..errors import InvalidRequestError

DEFAULT_MAX_BATCH = 16
UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12, "kib": 2 ** 10, "mib": 2 ** 20,
         "gib": 2 ** 30, "tib": 2 ** 40}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*")


def check_max_batch(max_batch) -> int:
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise InvalidRequestError(f"max_batch must be an integer >= 1 (rows per batch; an image is 2 rows when "
                                  f"guided), got {max_batch!r}.")
    return max_batch


def parse_memory_budget(budget) -> int | None:
    """Bytes as an int, or None (no limit)."""
    if budget is None:
        return None
    value = None
    if isinstance(budget, str):
        m = _SIZE.fullmatch(budget)
        if m and m.group(2).lower() in UNITS:
            value = float(m.group(1)) * UNITS[m.group(2).lower()]
    elif isinstance(budget, (int, float)) and not isinstance(budget, bool):
        value = float(budget)
    if value is None or not math.isfinite(value) or value < 1:
        raise InvalidRequestError(f"memory_budget must be a positive number of bytes, a size such as '20GiB' or "
                                  f"'512MB', or None for no limit; got {budget!r}.")
    return int(value)


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{n} bytes"
