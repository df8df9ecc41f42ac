"""The Redis keys of analytics: live hours, pending batches, visitor HyperLogLogs and marks, indexes, writers' tokens.

Every key carries the hash tag ``{analytics:a}``: the track and claim scripts touch several at once.
Layout: docs/design/keys-and-lua.md.
"""

from __future__ import annotations

from typing import NamedTuple

from hotcache import keys
from hotcache.analytics._events import FEATURE

__all__ = [
    "Indexes",
    "day_events_key",
    "hll_key",
    "hour_key",
    "index_keys",
    "key",
    "pending_key",
    "visitor_marks_key",
    "writer_key",
]


def key(*parts: object) -> str:
    return keys.tagged(FEATURE, "a", *parts)


def hour_key(hour: str) -> str:
    """The live hash of an hour's counters."""
    return key("h", hour)


def pending_key(batch: str) -> str:
    """The hash of a claimed batch, until the sync releases it."""
    return key("p", batch)


def hll_key(day: str, event: str) -> str:
    """The HyperLogLog of an event's distinct visitors of a day."""
    return key("v", day, event)


def visitor_marks_key(hour: str) -> str:
    """The hash of an hour's visitor marks (event -> 2 per call with visitors; odd: the day's overflow HLL), so
    the per-day visitor work runs once per hour and event, not on every call."""
    return key("vm", hour)


def day_events_key(day: str) -> str:
    """The set of a day's event names that have a visitor HyperLogLog."""
    return key("ev", day)


def writer_key(writer: str) -> str:
    """The last token a writer's track script recorded (``writer`` is hotcache.recovery.writer())."""
    return key("w", writer)


class Indexes(NamedTuple):
    hours: str  # zset: live hour label -> hour start
    pending: str  # set of pending batch ids
    days: str  # zset: day label -> day start (days with visitor HLLs)
    lock: str  # the sync lock


def index_keys() -> Indexes:
    return Indexes(key("hours"), key("pending"), key("days"), key("lock"))
