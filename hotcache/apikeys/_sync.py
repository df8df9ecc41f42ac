"""sync_usage(): copy Redis's per-day counters of the keys used in the window into MongoDB's usage history.

Idempotent (``$max`` of monotone counts) and priced by the keys used, never by all keys: it reads only
the day's touched index and the counters it names. See docs/apikeys.md ("Usage history", "Sync cost").
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from hotcache import clock
from hotcache.apikeys import _recovery
from hotcache.apikeys._documents import keys_coll, usage_coll
from hotcache.apikeys._index import read_touched, verified_members
from hotcache.apikeys._inputs import days_window
from hotcache.apikeys._reads import live_count, read_counters
from hotcache.apikeys._records import day_name, tag_of, touched_keys
from hotcache.apikeys._results import FEATURE, UsageSyncResult
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.exceptions import MongoUnavailable, MongoWriteError, RedisUnavailable

__all__ = ["sync_usage"]

log = logging.getLogger("hotcache.apikeys")

_CLOSE_GRACE = 3600  # seconds after a UTC day ends before the sync deletes that day's touched index


def sync_usage(days: int = 2) -> UsageSyncResult:
    """Copy Redis's per-day counters of the last ``days`` UTC days into MongoDB (``api_key_usage``).

    Idempotent: each (key, day) document gets ``$max`` of Redis's counter plus the uses taken back from it
    (``redis``) and of those taken back (``undone``), both only ever growing, so running it twice (or from two
    workers at once) writes the same totals, and a use taken back after a copy is taken back from the history
    too. Also pushes today's MongoDB-counted uses back into Redis and re-sends the tombstones of keys revoked
    in the window.

    An outage ends the run early with ``error`` set (logged once, as a WARNING): Redis keeps the counters, so
    nothing is lost and the next run copies them.

    Cost grows with the keys USED in the window, never with all keys: MongoDB: 1 indexed query for the
    keys revoked in the window, 1 bulk write (when anything was counted), 1 query for today's
    MongoDB-counted uses, and 1 ``$in`` query on those keys when there are any. Redis: 1 round trip of
    the tombstones and one SSCAN per day (more pages only for days with over ~1,000 keys), 1 round trip of
    one MGET per (used key, day) (per 2,000), then, when a past day's index is closed, 1 DEL round trip;
    plus 1 script call per key counted on MongoDB today.
    """
    days_window(days)
    run = _Run(days)
    try:
        _sync(run)
    except RedisUnavailable as exc:
        run.redis_available = False
        run.error = f"{type(exc).__name__}: {exc}"
    except (MongoUnavailable, MongoWriteError) as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    if run.error:
        log.warning("hotcache apikeys: usage sync stopped (the counters stay in Redis for the next run): %s", run.error)
    return UsageSyncResult(len(run.keys), days, run.written, run.pushed, run.redis_available, run.error)


@dataclass(slots=True)
class _Run:
    """What one sync has done so far (the result's figures when an outage stops it midway)."""

    days: int
    keys: set[str] = field(default_factory=set)
    written: int = 0
    pushed: int = 0
    redis_available: bool = True
    error: str = ""


def _sync(run: _Run) -> None:
    """The sync's steps; raises RedisUnavailable only while reading the counters, MongoDB's errors anywhere."""
    now = clock.utcnow()
    day_list = [now.date() - dt.timedelta(days=i) for i in range(run.days)]
    oldest = dt.datetime.combine(day_list[-1], dt.time(), tzinfo=dt.UTC)
    # Keys revoked in the window get their tombstone (again): a revocation made while some process could
    # not reach Redis reaches every process here at the latest (indexed range query, revoked keys only).
    revoked = [
        tag_of(d["key_sha256"])
        for d in keys_coll().find({"revoked_at": {"$gte": oldest}}, projection={"key_sha256": 1})
    ]
    touched = redis_backend.call(FEATURE, lambda r: read_touched(r, revoked, day_list))
    pairs = verified_members(touched)
    values = redis_backend.call(FEATURE, lambda r: read_counters(r, pairs)) if pairs else []
    tags: dict[str, str] = {}
    ops: list[mongo.Update | mongo.Insert] = []
    for (key_id, tag, day), value in zip(pairs, values, strict=True):
        tags[key_id] = tag
        counted = live_count(tag, day, value)  # None: not a count, never copied into the history
        if counted is not None and counted[0]:
            gross, undo = counted
            ops.append(
                mongo.Update(
                    {"key_id": key_id, "day": day_name(day)},
                    {
                        "$max": {"redis": gross, **({"undone": undo} if undo else {})},
                        "$setOnInsert": {"fallback": 0},
                        "$set": {"synced_at": now},
                    },
                    upsert=True,
                )
            )
    run.keys |= {k for k, _, _ in pairs}
    coll = usage_coll()
    if ops:
        coll.bulk(ops)
        run.written = len(ops)
    # The write is done: a past day's index whose day ended over _CLOSE_GRACE ago will not change again.
    grace = dt.timedelta(seconds=_CLOSE_GRACE)
    closed = [d for d in day_list[1:] if touched[d] and now >= _next_midnight_of(d) + grace]
    if closed:
        try:
            redis_backend.call(FEATURE, lambda r: r.delete(*[k for d in closed for k in touched_keys(d)]))
        except RedisUnavailable:
            pass  # read again by the next sync: idempotent
    # Uses counted on MongoDB today (while Redis was down) go back into Redis's base for the limit. Such a
    # key may be in no touched index (never counted on Redis today), so its tag comes from its record.
    fallback_docs = coll.find(
        {"day": day_name(day_list[0]), "fallback": {"$gt": 0}}, projection={"key_id": 1, "fallback": 1}
    )
    missing = sorted({f["key_id"] for f in fallback_docs} - tags.keys())
    if missing:
        for d in keys_coll().find({"_id": {"$in": missing}}, projection={"key_id": 1, "key_sha256": 1}):
            tags[d["key_id"]] = tag_of(d["key_sha256"])
    run.keys |= set(missing)
    items = [(tags[f["key_id"]], day_list[0], int(f["fallback"])) for f in fallback_docs if f["key_id"] in tags]
    if items:
        try:
            run.pushed = _recovery.push_bases(items)
        except RedisUnavailable:
            pass


def _next_midnight_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
