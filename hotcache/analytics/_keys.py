"""The Redis keys of analytics: live hours, pending batches, visitor HyperLogLogs and marks, indexes, writers' tokens.

Spread over keys.bucket_count() hash tags (buckets) by event name: an event's counters, visitors and the bucket's
indexes share one tag, since the track and claim scripts touch several at once. One bucket is the single tag
``{analytics:a}`` of earlier versions (``bucket`` None below: that one). Layout: docs/design/keys-and-lua.md.
"""

from __future__ import annotations

from typing import NamedTuple

from hotcache import keys
from hotcache.analytics._events import FEATURE

__all__ = [
    "LEGACY",
    "Indexes",
    "bucket",
    "bucket_writer",
    "buckets",
    "day_events_key",
    "hll_key",
    "hour_key",
    "index_keys",
    "key",
    "pending_key",
    "visitor_marks_key",
    "walked",
    "writer_key",
]


LEGACY = "a"  # the single hash tag of the layout before the buckets (and of KEY_BUCKETS=1)


def buckets() -> tuple[str, ...]:
    """The hash tags analytics is spread over (bucket b at index b)."""
    return keys.bucket_tags(FEATURE, LEGACY, keys.bucket_count())


def walked() -> tuple[str, ...]:
    """The buckets the sync and the reports walk: every bucket, then the single-tag layout when it is not one of
    them (counters written before the layout was spread, or before KEY_BUCKETS changed)."""
    tags = buckets()
    return tags if LEGACY in tags else (*tags, LEGACY)


def bucket(event: str) -> str:
    """The bucket of an event: its counters (every path), its visitors and the indexes they are listed in."""
    tags = buckets()
    return tags[keys.bucket_of(event, len(tags))]


def bucket_writer(writer: str, tag: str) -> str:
    """The lost-reply writer of ``writer``'s calls to bucket ``tag`` (one token key, one doubt per bucket); the
    writer itself in the single-tag layout."""
    return writer if tag == LEGACY else f"{writer}@{tag}"


def key(*parts: object, bucket: str | None = None) -> str:
    return keys.tagged(FEATURE, bucket or LEGACY, *parts)


def hour_key(hour: str, bucket: str | None = None) -> str:
    """The live hash of an hour's counters."""
    return key("h", hour, bucket=bucket)


def pending_key(batch: str, bucket: str | None = None) -> str:
    """The hash of a claimed batch, until the sync releases it."""
    return key("p", batch, bucket=bucket)


def hll_key(day: str, event: str, bucket: str | None = None) -> str:
    """The HyperLogLog of an event's distinct visitors of a day."""
    return key("v", day, event, bucket=bucket)


def visitor_marks_key(hour: str, bucket: str | None = None) -> str:
    """The hash of an hour's visitor marks (event -> 2 per call with visitors; odd: the day's overflow HLL), so
    the per-day visitor work runs once per hour and event, not on every call."""
    return key("vm", hour, bucket=bucket)


def day_events_key(day: str, bucket: str | None = None) -> str:
    """The set of a day's event names that have a visitor HyperLogLog."""
    return key("ev", day, bucket=bucket)


def writer_key(writer: str, bucket: str | None = None) -> str:
    """The last token a writer's track script recorded (``writer`` is hotcache.recovery.writer())."""
    return key("w", writer, bucket=bucket)


class Indexes(NamedTuple):
    hours: str  # zset: live hour label -> hour start
    pending: str  # set of pending batch ids
    days: str  # zset: day label -> day start (days with visitor HLLs)
    lock: str  # the sync lock (one for all buckets: the single-tag layout's)


def index_keys(bucket: str | None = None) -> Indexes:
    return Indexes(
        key("hours", bucket=bucket), key("pending", bucket=bucket), key("days", bucket=bucket), key("lock")
    )
