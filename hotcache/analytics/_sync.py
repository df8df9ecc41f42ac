"""sync(): closed hours of counters move from Redis to MongoDB exactly once (claim, apply, release), distinct
visitors with ``$max``, under a sealed lock that only saves work. See docs/analytics.md ("Exactly once") and
docs/design/exactly-once-jobs.md.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hotcache import clock, metering, signing
from hotcache.analytics._documents import (
    MAX_CHUNK,
    WriteStats,
    counter_op,
    hourly_collection,
    visitors_collection,
    write,
)
from hotcache.analytics._events import FEATURE, label_to_day
from hotcache.analytics._fallback import buffer
from hotcache.analytics._keys import day_events_key, hll_key, hour_key, index_keys, pending_key, walked
from hotcache.analytics._records import (
    MARKER,
    SIGNED_BATCH,
    Counters,
    Located,
    Members,
    Tally,
    batch_hour,
    counters,
    day_counts,
    index_members,
    is_batch,
    read_many,
    read_unsynced,
    text,
    valid_members,
)
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import BackendUnavailable, MongoWriteError, RedisUnavailable

__all__ = ["CLAIM", "AnalyticsSyncResult", "checkpoint", "sync"]

log = logging.getLogger("hotcache.analytics")

CLAIM = redis_backend.Script("analytics_claim")
_LOCK = redis_backend.Script("analytics_lock")
_UNLOCK = redis_backend.Script("analytics_unlock")
_RELEASE = redis_backend.Script("analytics_release")
_SIGNED_LOCK = "analytics.lock"  # hotcache.signing purpose of the sync lock's value


@dataclass(frozen=True, slots=True)
class AnalyticsSyncResult:
    dry_run: bool
    hours_claimed: int  # hours whose live counters this run claimed (one hash per bucket and hour)
    batches: int  # batches applied and released (claimed now or recovered)
    recovered: int  # of those, batches left pending by an earlier run
    counters: int  # (hour, event, path) counters written
    events: int  # sum of their counts
    applied: int  # counters that changed MongoDB (the rest were replays of applied batches)
    mongo_round_trips: int
    visitor_counts: int  # (event, day) distinct-visitor counts written
    days_closed: int  # closed days whose HyperLogLogs were removed from Redis
    pending_left: int | None  # batches still pending (an error stopped the run); None: unknown, Redis is down
    locked_out: bool = False  # another sync held the lock; nothing done
    error: str = ""
    tampered: int = 0  # Redis records this run refused or reset as not written by hotcache (docs/analytics.md)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def why_stopped(self) -> str:
        """What stopped the run and what stays pending ("" when it finished): for the command and the task."""
        if not self.error:
            return ""
        if self.pending_left is None:
            left = (
                "Redis does not answer, so how many batches are pending cannot be read; nothing is lost: "
                "tracked counters stay in Redis (ANALYTICS_RETENTION_HOURS) and the next run moves them once."
            )
        else:
            left = f"{self.pending_left} batch(es) stay pending for the next run; nothing is lost or counted twice."
        return f"sync stopped: {self.error}. {left}"


@dataclass(slots=True)
class _Run:
    """What one sync run has done so far (the result's figures while they change)."""

    dry_run: bool
    hours_claimed: int = 0
    batches: int = 0
    recovered: int = 0
    counters: int = 0
    events: int = 0
    applied: int = 0
    mongo_round_trips: int = 0
    visitor_counts: int = 0
    days_closed: int = 0
    pending_left: int | None = 0
    error: str = ""

    def result(self, tally: Tally, *, locked_out: bool = False) -> AnalyticsSyncResult:
        return AnalyticsSyncResult(**asdict(self), locked_out=locked_out, tampered=tally.n)


def checkpoint(step: str) -> None:
    """Named points of the sync (before_claim, after_claim, before_apply, after_chunk, before_release).

    Tests replace it to inject a crash or hold two runs at the same point; it does nothing in production.
    """


def sync(
    include_current_hour: bool = False,
    dry_run: bool = False,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> AnalyticsSyncResult:
    """Move counters of closed hours (and leftovers of earlier runs) into MongoDB exactly once.

    ``progress(done, total)`` is called after each MongoDB bulk write. Outages end the run early with
    ``error`` set and the claimed batches left pending for the next run; nothing is lost or doubled.
    """
    if not dry_run and buffer.has_data():
        buffer.flush()  # this process's outage buffer, if any (best effort; it keeps what fails)
    run = _Run(dry_run)
    tally = Tally()
    token = signing.seal(_SIGNED_LOCK, index_keys().lock, uuid.uuid4().hex)
    locked = False
    try:
        if dry_run:
            _dry_run(run, include_current_hour, tally)
            return run.result(tally)
        locked = _lock(token, tally)
        if not locked:
            return run.result(tally, locked_out=True)
        _sync_counters(run, include_current_hour, progress, tally)
        _sync_visitors(run, tally)
    except (BackendUnavailable, MongoWriteError) as exc:
        log.warning("hotcache analytics: sync stopped, pending batches stay for the next run: %s", exc)
        run.error = f"{type(exc).__name__}: {exc}"
        run.pending_left = _pending_count()
    finally:
        if locked:
            _unlock(token)
    if run.counters:
        metering.event(FEATURE, "synced_counters", run.counters)
    return run.result(tally)


# --- the lock ------------------------------------------------------------------------------------------


def _lock(token: str, tally: Tally) -> bool:
    """Take the sync lock with this run's sealed ``token``. A lock hotcache did not write (not sealed, no expiry,
    longer than the timeout, wrong type) is tampered: it is taken over, so it cannot stop every sync."""
    timeout_ms = int(hotcache_settings.ANALYTICS_SYNC_LOCK_TIMEOUT) * 1000
    if timeout_ms <= 0:
        return True  # lock disabled: the protocol alone keeps the totals exact
    lock_key = index_keys().lock
    reply = redis_backend.call(FEATURE, lambda r: _LOCK(r, [lock_key], [token, timeout_ms, ""]))
    if int(reply[0]):
        return True
    _, value, pttl, kind = reply
    if text(kind) == "string" and signing.unseal(_SIGNED_LOCK, lock_key, value) and 0 < int(pttl) <= timeout_ms:
        return False  # another run holds it
    tally(lock_key, "is not a sync lock hotcache wrote (unsigned, wrong type, or outliving the timeout); taken over")
    refused = value if text(kind) == "string" else "!"
    reply = redis_backend.call(FEATURE, lambda r: _LOCK(r, [lock_key], [token, timeout_ms, refused]))
    return bool(int(reply[0]))


def _unlock(token: str) -> None:
    if int(hotcache_settings.ANALYTICS_SYNC_LOCK_TIMEOUT) <= 0:
        return
    lock_key = index_keys().lock
    try:
        redis_backend.call(FEATURE, lambda r: _UNLOCK(r, [lock_key], [token]))
    except RedisUnavailable:
        log.warning("hotcache analytics: could not release the sync lock; it expires by itself")


# --- counters: claim, apply, release -------------------------------------------------------------------


def _pending_count() -> int | None:
    """Batches in the pending sets of every bucket; None when Redis does not answer (then nobody can tell)."""
    try:
        counts = read_many(lambda pipe: [pipe.scard(index_keys(b).pending) for b in walked()])
    except RedisUnavailable:
        return None
    return sum(0 if isinstance(n, Exception) else int(n) for n in counts)


def _claimable_hours(include_current_hour: bool, tally: Tally) -> Members:
    """(bucket, hour label) of every bucket's hour index due for a claim (one pipeline), and the members that
    are no hour label (tampered)."""
    if include_current_hour:
        cutoff: float | str = "+inf"
    else:
        cutoff = clock.time() - 3600 - float(hotcache_settings.ANALYTICS_SYNC_GRACE)

    def due(pipe: Any, key: str) -> Any:
        return pipe.zrangebyscore(key, "-inf", cutoff, start=0, num=10_000)

    return index_members(tally, hours=due)["hours"]


def _claim(include_current_hour: bool, tally: Tally) -> tuple[list[Located], set[Located]]:
    """Claim every closed hour of every bucket as a new pending batch (one pipeline of analytics_claim.lua, for the
    buckets with closed hours); every pending (bucket, batch id) (sorted), and those pending before."""
    ttl = int(hotcache_settings.ANALYTICS_RETENTION_HOURS) * 3600
    walk = walked()
    hours, stray_hours = _claimable_hours(include_current_hour, tally)
    raws_before = read_many(lambda pipe: [pipe.smembers(index_keys(b).pending) for b in walk])
    claims: dict[str, tuple[list[str], list[Any]]] = {}
    for b, hour in hours:
        idx = index_keys(b)
        claim_keys, claim_args = claims.setdefault(b, ([idx.hours, idx.pending], [ttl, MARKER]))
        batch = f"{hour}-{uuid.uuid4().hex[:16]}"
        claim_keys += [hour_key(hour, b), pending_key(batch, b)]
        # The marker binds the batch id to its hour under SECRET_KEY: a hash swapped with another batch's, or
        # a pending id someone added, has no valid marker and is refused.
        claim_args += [hour, batch, signing.seal(SIGNED_BATCH, batch, hour)]
    calls = [(CLAIM, k, a) for k, a in claims.values()]
    replies = redis_backend.call(FEATURE, lambda r: redis_backend.run_scripts(r, calls)) if calls else []
    claimed = dict(zip(claims, replies, strict=True))
    before: set[Located] = set()
    pending: list[Located] = []
    stray_batches: list[tuple[str, Any]] = []
    for b, raw_before in zip(walk, raws_before, strict=True):
        pending_set = index_keys(b).pending
        if b not in claimed:
            # No claim in this bucket: its pending set as read is what is pending (reported here).
            good, bad = valid_members(pending_set, raw_before, is_batch, tally)
            before |= {(b, x) for x in good}
            pending += [(b, x) for x in good]
            stray_batches += [(b, m) for m in bad]
            continue
        before |= {(b, x) for x in valid_members(pending_set, raw_before, is_batch, Tally(silent=True))[0]}
        repaired, raw_pending = claimed[b]
        for _ in range(int(repaired)):
            tally(pending_set, "claim found an analytics index or hour hash of the wrong type; deleted")
        good, bad = valid_members(pending_set, raw_pending, is_batch, tally)
        pending += [(b, x) for x in good]
        stray_batches += [(b, m) for m in bad]
    pending.sort(key=lambda p: (p[1], p[0]))
    if stray_hours or stray_batches:
        _remove_members(hours=stray_hours, batches=stray_batches)
    return pending, before


def _sync_counters(
    run: _Run, include_current_hour: bool, progress: Callable[[int, int], None] | None, tally: Tally
) -> None:
    checkpoint("before_claim")
    pending, before = _claim(include_current_hour, tally)
    run.hours_claimed = len({batch_hour(x) for _, x in set(pending) - before})  # hours, whatever the buckets
    checkpoint("after_claim")

    chunk = min(MAX_CHUNK, int(hotcache_settings.ANALYTICS_SYNC_CHUNK))
    coll = hourly_collection()
    stats = WriteStats()
    # Read every pending batch in one pipelined round trip and write counters in chunks that may span
    # batches, so many small hours still cost one MongoDB round trip per chunk of counters.
    raws = read_many(lambda pipe: [pipe.hgetall(pending_key(x, b)) for b, x in pending]) if pending else []
    batches: dict[Located, Counters] = {}
    refused: list[Located] = []
    for (b, batch), raw in zip(pending, raws, strict=True):
        found = counters(pending_key(batch, b), raw, tally, batch=batch)
        if found is None:
            refused.append((b, batch))  # not a batch hotcache claimed: released unapplied
        else:
            batches[(b, batch)] = found
    ops: list[tuple[Located, mongo.Update]] = []
    for located, found in batches.items():
        batch = located[1]
        hour = batch_hour(batch)
        for (event, path), n in found.items():
            ops.append((located, counter_op(batch, hour, event, path, n)))
            run.events += n
    total = len(ops)
    checkpoint("before_apply")
    last_op_of: dict[Located, int] = {}
    for i, (located, _) in enumerate(ops):
        last_op_of[located] = i
    empty = [b for b in batches if b not in last_op_of]  # expired or empty pending keys: nothing to apply
    released = _release(empty) if empty else 0
    if refused:
        _release(refused)
    for start in range(0, total, chunk):
        part = ops[start : start + chunk]
        write(coll, [op for _, op in part], stats)
        run.mongo_round_trips = stats.round_trips
        run.counters = start + len(part)
        run.applied = stats.applied
        checkpoint("after_chunk")
        end = start + len(part) - 1
        done = [b for b, last in last_op_of.items() if start <= last <= end]
        if done:
            checkpoint("before_release")
            released += _release(done)
        if progress:
            progress(start + len(part), total)
    run.batches = released
    run.recovered = len(before & set(batches))


def _release(batches: list[Located]) -> int:
    """DEL the pending keys and SREM them from their bucket's pending set, atomically per bucket (one pipeline of
    analytics_release.lua): only after MongoDB acked."""
    by_bucket: dict[str, list[str]] = {}
    for b, batch in batches:
        by_bucket.setdefault(b, []).append(batch)
    calls = [
        (_RELEASE, [index_keys(b).pending, *(pending_key(x, b) for x in ids)], ids) for b, ids in by_bucket.items()
    ]
    redis_backend.call(FEATURE, lambda r: redis_backend.run_scripts(r, calls))
    return len(batches)


def _remove_members(
    *,
    hours: Sequence[tuple[str, Any]] = (),
    batches: Sequence[tuple[str, Any]] = (),
    days: Sequence[tuple[str, Any]] = (),
) -> None:
    """Take members that are no hour label, batch id or day label out of their bucket's indexes (as Redis
    returned them; one pipeline)."""

    def remove(r: Any) -> Any:
        pipe = r.pipeline(transaction=False)
        for b, m in hours:
            pipe.zrem(index_keys(b).hours, m)
        for b, m in batches:
            pipe.srem(index_keys(b).pending, m)
        for b, m in days:
            pipe.zrem(index_keys(b).days, m)
        return pipe.execute(raise_on_error=False)

    redis_backend.call(FEATURE, remove)


# --- distinct visitors ---------------------------------------------------------------------------------


def _whole_zset(pipe: Any, key: str) -> Any:
    return pipe.zrange(key, 0, -1)


def _days(tally: Tally) -> list[Located]:
    """(bucket, day label) of every bucket's day index (one pipeline); members that are no day are removed."""
    days, stray = index_members(tally, days=_whole_zset)["days"]
    if stray:
        _remove_members(days=stray)
    return days


def _sync_visitors(run: _Run, tally: Tally) -> None:
    days = _days(tally)
    counts, listed = day_counts(days, tally)
    if counts:
        ops = [
            mongo.Update(
                {"_id": f"{d}|{e}"},
                # $max: replays and racing syncs only ever raise the count to what Redis said.
                {"$max": {"count": n}, "$setOnInsert": {"day": label_to_day(d), "event": e}},
                upsert=True,
            )
            for (d, e), n in counts.items()
        ]
        coll = visitors_collection()
        stats = WriteStats()
        for i in range(0, len(ops), MAX_CHUNK):
            write(coll, ops[i : i + MAX_CHUNK], stats)
        run.mongo_round_trips += stats.round_trips
        run.visitor_counts = len(ops)
    # A day is over (no event can reach it) once its end plus the grace has passed: drop its HLLs.
    cutoff = clock.time() - 86400 - float(hotcache_settings.ANALYTICS_SYNC_GRACE)
    closed = [(b, d) for b, d in days if label_to_day(d).timestamp() <= cutoff]
    if closed:

        def drop(r: Any) -> Any:
            # Per bucket, not one MULTI (Redis Cluster cannot span buckets): a day left listed after its keys
            # were deleted reads as no visitors and is dropped again by the next sync.
            pipe = r.pipeline(transaction=False)
            for b, d in closed:
                events = listed.get((b, d), [])
                for key in (day_events_key(d, b), *(hll_key(d, e, b) for e in events)):
                    pipe.delete(key)  # one key per DEL: redis-py's cluster pipeline refuses a multi-key DEL
                pipe.zrem(index_keys(b).days, d)
            return pipe.execute()

        redis_backend.call(FEATURE, drop)
        run.days_closed = len(closed)


# --- dry run -------------------------------------------------------------------------------------------


def _dry_run(run: _Run, include_current_hour: bool, tally: Tally) -> None:
    """What a sync would move now: closed live hours plus pending batches of every bucket, read only."""
    hours = _claimable_hours(include_current_hour, tally).good
    pending = index_members(tally, pending=lambda pipe, key: pipe.smembers(key))["pending"].good
    records = read_unsynced(hours, pending, tally)
    for _, _, found in records:
        run.counters += len(found)
        run.events += sum(found.values())
    run.hours_claimed = len({h for (_, h), (_, raw, _) in zip(hours, records, strict=False) if raw})
    run.batches = len(pending)
    run.recovered = len(pending)
    days = index_members(tally, days=_whole_zset)["days"].good
    run.visitor_counts = len(day_counts(days, tally)[0])
    run.pending_left = len(pending)
