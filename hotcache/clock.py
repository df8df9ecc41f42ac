"""The one place hotcache reads the wall clock, so tests can move time without sleeping."""

from __future__ import annotations

import datetime as dt
import time as _time

__all__ = ["monotonic", "now", "time", "utcnow"]


def time() -> float:
    """Seconds since the epoch (patched by tests through hotcache.testing.frozen_clock)."""
    return _time.time()


def monotonic() -> float:
    return _time.monotonic()


def utcnow() -> dt.datetime:
    """Timezone-aware UTC now, derived from time() so one patch moves both."""
    return dt.datetime.fromtimestamp(time(), tz=dt.UTC)


def now() -> dt.datetime:
    return utcnow()
