"""The Redis-outage path of analytics: a bounded in-process buffer flushed to MongoDB in bulk under flush ids,
and the per-hour slot registry that keeps the cardinality cap across processes and flushes.
See docs/analytics.md ("Failure behaviour").
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from hotcache import clock, metering, recovery
from hotcache.analytics._documents import MAX_CHUNK, WriteStats, counter_op, doc_id, hourly_collection, write
from hotcache.analytics._events import FEATURE, OVERFLOW, OVERFLOW_SLACK, label_to_hour
from hotcache.backends import mongo
from hotcache.conf import hotcache_settings
from hotcache.exceptions import BackendUnavailable, DuplicateKey, MongoWriteError

__all__ = ["SLOTS", "BufferKey", "FallbackBuffer", "buffer", "flush_fallback", "slots_collection"]

log = logging.getLogger("hotcache.analytics")

SLOTS = "analytics_hour_slots"  # per-hour counter slots the outage path has taken (the cap across processes)

BufferKey = tuple[str, str, str]  # (hour label, event, path) of a buffered counter


def _fold(hour_fields: int, has: Callable[[str, str], bool], event: str, path: str) -> tuple[str, str, int]:
    """Where a new counter goes, as analytics_track.lua decides it: its own (event, path) while the hour has
    fewer than ANALYTICS_MAX_COUNTERS_PER_HOUR fields, then the event's ``(other)`` path while it has fewer
    than cap + slack, then the one global ``(other)`` counter. Returns (event, path, overflow level 0|1|2)."""
    cap = int(hotcache_settings.ANALYTICS_MAX_COUNTERS_PER_HOUR)
    if has(event, path) or hour_fields < cap:
        return event, path, 0
    if has(event, OVERFLOW) or hour_fields < cap + OVERFLOW_SLACK:
        return event, OVERFLOW, 1
    return OVERFLOW, OVERFLOW, 2


# --- the cap across processes: a per-hour slot registry in MongoDB --------------------------------------


def _slots_indexes(coll: mongo.Collection) -> None:
    # A registry document is needed while a buffer may still write its hour (the retention); then it goes.
    coll.create_index([("expires", mongo.ASCENDING)], expire_after_seconds=0, name="expires")


def slots_collection() -> mongo.Collection:
    return mongo.ensure_indexes(SLOTS, feature=FEATURE, create=_slots_indexes)


def _reserve_slots(hour: str, tier: str, wanted: int, limit: int) -> int:
    """Take ``wanted`` slots of ``tier`` ("own" or "other") for ``hour`` from the MongoDB registry, shared by
    every process; returns how many of them fall within ``limit``. One atomic ``$inc``: concurrent flushes
    never hand out the same slot. A slot taken but not used (a race on the same new path, a lost reply)
    is simply wasted: the bound only gets tighter."""
    expires = label_to_hour(hour) + dt.timedelta(hours=int(hotcache_settings.ANALYTICS_RETENTION_HOURS) + 2)
    coll = slots_collection()
    update = {"$inc": {tier: wanted}, "$setOnInsert": {"expires": expires}}
    try:
        doc = coll.find_one_and_update({"_id": hour}, update, upsert=True)
    except DuplicateKey:  # two first upserts of the hour raced; the document exists now
        doc = coll.find_one_and_update({"_id": hour}, update, upsert=True)
    after = int((doc or {}).get(tier, wanted))
    return max(0, min(wanted, limit - (after - wanted)))


def _within_hour_caps(counts: dict[BufferKey, int]) -> dict[BufferKey, int]:
    """Fold a flush's counters so that the outage path, over every process and flush, gives an hour at most
    cap + slack + 1 documents in analytics_hourly (cap + 1 with one event name), like the Redis path.

    Counters whose document exists already need no slot. New (event, path) documents take "own" slots
    (at most the cap per hour); the refused ones go to the event's ``(other)`` document, which takes an
    "other" slot if it is new (at most the slack per hour), else to the global ``(other)`` document.
    MongoDB: one find, one ``$inc`` per hour with new paths, one more only past the cap.
    """
    cap = int(hotcache_settings.ANALYTICS_MAX_COUNTERS_PER_HOUR)
    ids = {doc_id(h, e, p) for h, e, p in counts} | {doc_id(h, e, OVERFLOW) for h, e, _ in counts}
    found = hourly_collection().find({"_id": {"$in": sorted(ids)}}, projection={"_id": 1})
    existing = {d["_id"] for d in found}
    by_hour: dict[str, list[BufferKey]] = {}
    for key in counts:  # insertion order: the first paths of the hour keep their own counter, as in Redis
        by_hour.setdefault(key[0], []).append(key)
    out: dict[BufferKey, int] = {}
    for hour, hour_keys in by_hour.items():
        new_own = [k for k in hour_keys if OVERFLOW not in k[1:] and doc_id(*k) not in existing]
        granted = _reserve_slots(hour, "own", len(new_own), cap) if new_own else 0
        refused = set(new_own[granted:])
        to_other = [k for k in hour_keys if k in refused or (k[2] == OVERFLOW and k[1] != OVERFLOW)]
        new_other = list(dict.fromkeys(e for _, e, _ in to_other if doc_id(hour, e, OVERFLOW) not in existing))
        granted_other = _reserve_slots(hour, "other", len(new_other), OVERFLOW_SLACK) if new_other else 0
        no_room = set(new_other[granted_other:])
        for key in hour_keys:
            _, event, path = key
            if key in refused or (path == OVERFLOW and event != OVERFLOW):
                path = OVERFLOW
                if event in no_room:
                    event = OVERFLOW
            target = (hour, event, path)
            out[target] = out.get(target, 0) + counts[key]
        if refused:
            metering.event(FEATURE, "overflow", len(refused))
    return out


def _drop_expired(counts: dict[BufferKey, int]) -> dict[BufferKey, int]:
    """``counts`` without hours past the retention: Redis would have expired them, and their hour's slot
    registry may be gone, so writing them could break the hour's cap."""
    cutoff = clock.time() - int(hotcache_settings.ANALYTICS_RETENTION_HOURS) * 3600
    old = {k: n for k, n in counts.items() if label_to_hour(k[0]).timestamp() + 3600 <= cutoff}
    if not old:
        return counts
    metering.event(FEATURE, "dropped", sum(old.values()))
    log.warning(
        "hotcache analytics: dropped %d buffered event(s) older than ANALYTICS_RETENTION_HOURS", sum(old.values())
    )
    return {k: n for k, n in counts.items() if k not in old}


# --- the buffer ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Flush:
    """Counters on their way to MongoDB under one flush id; retried with the same id until acknowledged."""

    id: str
    counts: dict[BufferKey, int]
    folded: bool = False  # slots taken and counters folded: a retry must send exactly the same operations


class FallbackBuffer(recovery.ProcessLocal):
    """Bounded in-process counters for the Redis outage path, flushed to MongoDB in bulk.

    ``_counts`` takes new events, folded past the hour's cap as the Redis script folds them; a flush moves
    them to ``_inflight`` under a fresh flush id, folds them again against the hour's slot registry in
    MongoDB (the cap across processes and flushes), and an unacknowledged flush is retried with the same
    id and the same counters (so it is applied once). Memory: at most 2 x ANALYTICS_FALLBACK_BUFFER_SIZE
    counters. Counters of hours past ANALYTICS_RETENTION_HOURS are dropped, as Redis expires them. A forked
    child starts empty (the parent flushes what it buffered).
    """

    def __init__(self) -> None:
        self._flush_lock = threading.Lock()
        super().__init__()
        self._forget()

    def _renew_locks(self) -> None:
        super()._renew_locks()
        self._flush_lock = threading.Lock()

    def _forget(self) -> None:
        self._counts: dict[BufferKey, int] = {}
        self._fields: dict[str, int] = {}  # counters per hour in _counts (what HLEN is to the Redis script)
        self._inflight: _Flush | None = None
        self._last_flush = clock.monotonic()

    def has_data(self) -> bool:
        return bool(self._counts) or self._inflight is not None

    def _offer(self, key: BufferKey, n: int) -> int | None:
        """Buffer ``n`` at ``key`` (folded past the cap); the overflow level, or None if the buffer is full."""
        hour = key[0]
        with self._lock:
            fields = self._fields.get(hour, 0)
            event, path, level = _fold(fields, lambda e, p: (hour, e, p) in self._counts, key[1], key[2])
            target = (hour, event, path)
            if target not in self._counts:
                if len(self._counts) >= int(hotcache_settings.ANALYTICS_FALLBACK_BUFFER_SIZE):
                    return None
                self._fields[hour] = fields + 1
            if not self._counts and self._inflight is None:
                self._last_flush = clock.monotonic()  # the interval runs from the first buffered event
            self._counts[target] = self._counts.get(target, 0) + n
            return level

    def add(self, key: BufferKey, n: int) -> str:
        """Buffer ``n`` events at ``key``: "fallback", or "dropped" when neither the buffer nor MongoDB takes them."""
        level = self._offer(key, n)
        if level is None:
            self.flush()  # make room if MongoDB takes it
            level = self._offer(key, n)
        if level is None:
            metering.event(FEATURE, "dropped", n)
            log.warning("hotcache analytics: Redis and the fallback are full; dropped %d %s event(s)", n, key[1])
            return "dropped"
        metering.event(FEATURE, "fallback", n)
        if level:
            metering.event(FEATURE, "overflow")
        self.flush_if_due()
        return "fallback"

    def flush_if_due(self) -> int:
        with self._lock:
            size = len(self._counts) + (len(self._inflight.counts) if self._inflight else 0)
            due = size >= int(hotcache_settings.ANALYTICS_FALLBACK_BUFFER_SIZE) or (
                clock.monotonic() - self._last_flush >= float(hotcache_settings.ANALYTICS_FALLBACK_FLUSH_INTERVAL)
            )
        return self.flush() if due else 0

    def flush(self) -> int:
        """Write the buffered counters to MongoDB; returns how many were acknowledged (0 if MongoDB failed)."""
        if not self._flush_lock.acquire(blocking=False):
            return 0  # another thread is flushing
        try:
            with self._lock:
                self._last_flush = clock.monotonic()
                if self._inflight is None and self._counts:
                    self._inflight = _Flush(f"f{uuid.uuid4().hex}", self._counts)
                    self._counts = {}
                    self._fields = {}
                inflight = self._inflight
            if inflight is None:
                return 0
            try:
                if not inflight.folded:
                    inflight.counts = _drop_expired(inflight.counts)
                    inflight.counts = _within_hour_caps(inflight.counts) if inflight.counts else {}
                    inflight.folded = True
                ops = [counter_op(inflight.id, h, e, p, n, ids="flushes") for (h, e, p), n in inflight.counts.items()]
                stats = WriteStats()
                coll = hourly_collection()
                for i in range(0, len(ops), MAX_CHUNK):
                    write(coll, ops[i : i + MAX_CHUNK], stats)
            except (BackendUnavailable, MongoWriteError) as exc:
                log.warning(
                    "hotcache analytics: fallback flush of %d counters failed, kept for retry: %s",
                    len(inflight.counts),
                    exc,
                )
                return 0
            with self._lock:
                self._inflight = None
            metering.event(FEATURE, "fallback_flushed", len(ops))
            return len(ops)
        finally:
            self._flush_lock.release()


buffer = FallbackBuffer()


def flush_fallback() -> int:
    """Flush this process's Redis-outage buffer to MongoDB now; returns counters written."""
    return buffer.flush()
