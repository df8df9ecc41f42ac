"""Rates: ``"<count>/<n><unit>"`` strings (``100/m``, ``5/10s``) parsed into (count, seconds), with their bounds.

See docs/ratelimit.md.
"""

from __future__ import annotations

import re

from hotcache.exceptions import HotcacheError

__all__ = ["MAX_COUNT", "MAX_WINDOW", "InvalidRate", "parse_rate"]

MAX_COUNT = 10**12  # per window; far beyond any real limit, and exact in the script's float arithmetic
MAX_WINDOW = 366 * 86400

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(  # ASCII: \d would also match other scripts' digits
    r"\s*(\d+)\s*/\s*(\d*)\s*(s|sec|second|seconds|m|min|minute|minutes|h|hour|hours|d|day|days)?\s*",
    re.IGNORECASE | re.ASCII,
)


class InvalidRate(HotcacheError, ValueError):
    """A rate that is not ``<count>/<n><unit>`` (``100/m``, ``5/10s``, ``1000/5m``, ``10000/d``)."""


def parse_rate(rate: str | tuple[int, int]) -> tuple[int, int]:
    """``"100/m"`` -> (100, 60); ``"5/10s"`` -> (5, 10); a ``(count, seconds)`` tuple passes through."""
    if isinstance(rate, tuple):
        if (
            len(rate) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in rate)
            and 0 <= rate[0] <= MAX_COUNT
            and 0 < rate[1] <= MAX_WINDOW
        ):
            return int(rate[0]), int(rate[1])
        raise InvalidRate(f"rate tuple {rate!r:.80} must be (0 <= count <= 10**12, 0 < seconds <= a year)")
    if not isinstance(rate, str):
        raise InvalidRate(f"rate must be a string like '100/m', not {type(rate).__name__}")
    # Bounded before parsing: int() of thousands of digits is slow, and refused past 4300 digits.
    m = _RATE.fullmatch(rate) if len(rate) <= 64 else None
    if not m:
        raise InvalidRate(f"rate {rate[:40]!r} is not '<count>/<n><s|m|h|d>' (e.g. '100/m', '5/10s', '1000/5m')")
    count, multi, unit = m.groups()
    if int(count) > MAX_COUNT:
        raise InvalidRate(f"rate {rate!r} allows more than 10**12 per window")
    seconds = _PERIODS[(unit or "s")[0].lower()] * (int(multi) if multi else 1)
    if seconds <= 0:
        raise InvalidRate(f"rate {rate!r} has a zero-length window")
    if seconds > MAX_WINDOW:
        raise InvalidRate(f"rate {rate!r} has a window longer than a year")
    return int(count), seconds
