"""The MongoDB documents of analytics: one per (hour, event, path) in ``analytics_hourly`` and one per (day,
event) in ``analytics_visitors``, and the ``$inc`` guarded by a batch or flush id that makes a replayed write
change nothing. See docs/analytics.md ("Exactly once").
"""

from __future__ import annotations

from dataclasses import dataclass

from hotcache import recovery
from hotcache.analytics._events import FEATURE, label_to_hour
from hotcache.backends import mongo

__all__ = [
    "HOURLY",
    "MAX_CHUNK",
    "VISITORS",
    "WriteStats",
    "counter_op",
    "doc_id",
    "hourly_collection",
    "visitors_collection",
    "write",
]

HOURLY = "analytics_hourly"
VISITORS = "analytics_visitors"
MAX_CHUNK = 1000  # counters per MongoDB bulk call (one round trip)
_KEEP_BATCH_IDS = 50  # batch ids remembered per document; a document sees one batch per claim of its hour


def _hourly_indexes(coll: mongo.Collection) -> None:
    # The report's range queries: all events by hour, or one event by hour.
    coll.create_index([("hour", mongo.ASCENDING), ("event", mongo.ASCENDING)], name="hour_event")
    coll.create_index([("event", mongo.ASCENDING), ("hour", mongo.ASCENDING)], name="event_hour")


def _visitors_indexes(coll: mongo.Collection) -> None:
    coll.create_index([("day", mongo.ASCENDING)], name="day")


def hourly_collection() -> mongo.Collection:
    return mongo.ensure_indexes(HOURLY, feature=FEATURE, create=_hourly_indexes)


def visitors_collection() -> mongo.Collection:
    return mongo.ensure_indexes(VISITORS, feature=FEATURE, create=_visitors_indexes)


def doc_id(hour: str, event: str, path: str) -> str:
    return f"{hour}|{event}|{path}"


def counter_op(batch: str, hour: str, event: str, path: str, n: int, *, ids: str = "batches") -> mongo.Update:
    """``$inc`` guarded by the batch id: a replay matches nothing (or hits E11000 on ``_id``).

    Sync batches are remembered in ``batches``, outage-buffer flushes in ``flushes``, so a long outage's
    many flushes cannot push a pending sync batch out of the window that makes its replay harmless.
    """
    return mongo.Update(
        {"_id": doc_id(hour, event, path), ids: {"$ne": batch}},
        {
            "$inc": {"count": n},
            "$push": {ids: {"$each": [batch], "$slice": -_KEEP_BATCH_IDS}},
            "$setOnInsert": {"hour": label_to_hour(hour), "event": event, "path": path},
        },
        upsert=True,
    )


@dataclass(slots=True)
class WriteStats:
    round_trips: int = 0
    applied: int = 0


def _as_plain_update(op: mongo.Update | mongo.Insert) -> mongo.Update | mongo.Insert:
    # E11000 proves the document exists. As a plain update the op either applies (another batch inserted
    # the document first) or matches nothing (this batch is already in ``batches``).
    return mongo.Update(op.filter, op.update, upsert=False) if isinstance(op, mongo.Update) else op


def write(coll: mongo.Collection, ops: list[mongo.Update], stats: WriteStats) -> None:
    """One bulk call (plus one more only if some upserts hit E11000). Raises on an unacknowledged write."""
    result = recovery.bulk_retrying_duplicates(coll, ops, _as_plain_update)
    stats.round_trips += result.round_trips
    stats.applied += result.applied
