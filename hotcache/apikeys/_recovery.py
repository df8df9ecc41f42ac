"""What API keys owe Redis after a lost reply or an outage, on hotcache.recovery's registries.

Checks in doubt (one per writer) are settled by apikey_resolve.lua before this process's next check
script; MongoDB-counted uses (pushed into the day's base), tombstones, touched-index entries and the
``doubt`` reservations to take back are replayed then too. See docs/apikeys.md ("Lost replies").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
from typing import Any

from hotcache import clock, recovery, signing
from hotcache.apikeys._documents import usage_coll
from hotcache.apikeys._index import write_index
from hotcache.apikeys._reads import live_count, read_counters
from hotcache.apikeys._records import TOKEN_TTL, base_key, counter_ttl, day_name, text, token_key, undo_key, use_key
from hotcache.apikeys._results import FEATURE
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.exceptions import BackendUnavailable

__all__ = [
    "Doubt",
    "bases",
    "doubts",
    "next_seq",
    "owed",
    "push_bases",
    "reservations",
    "revokes",
    "settle_and_replay",
    "settle_doubts",
    "touched",
]

log = logging.getLogger("hotcache.apikeys")

_BASE = redis_backend.Script("apikey_base")
_RESOLVE = redis_backend.Script("apikey_resolve")


@dataclasses.dataclass(slots=True, eq=False)
class Doubt:
    """A check whose script reached Redis but whose reply was lost: Redis may or may not have counted it."""

    writer: str
    seq: int
    tag: str
    day: dt.date
    key_id: str = ""
    allowed: bool = False  # what the request was answered (decided on MongoDB, not counted there)
    held: bool = False  # reserved in the usage document's "doubt" field until settled


doubts: recovery.InDoubt[Doubt] = recovery.InDoubt()
bases: recovery.Deferred[tuple[str, str, dt.date]] = recovery.Deferred()  # (key_id, tag, day) counted on MongoDB
revokes: recovery.Deferred[str] = recovery.Deferred()  # tags whose tombstone could not be written
touched: recovery.Deferred[tuple[dt.date, str]] = recovery.Deferred()  # (day, "<key_id>:<tag>") not yet indexed
# "doubt" uses to take back, per (key_id, tag, day)
reservations: recovery.DeferredCounts[tuple[str, str, dt.date]] = recovery.DeferredCounts()

_seq = itertools.count(1)  # check sequence numbers: grow per process, so per writer (recovery.writer())


def next_seq() -> int:
    return next(_seq)


def owed() -> bool:
    """Whether this process has a doubt to settle or a write to replay before its next check script."""
    return bool(doubts or bases or revokes or touched or reservations)


def settle_and_replay() -> None:
    """Redis answers again: settle checks in doubt, then write deferred tombstones and index entries, take back
    settled reservations on MongoDB and push MongoDB-counted uses into the day's base keys.

    Raises RedisUnavailable when Redis does not answer (nothing of the caller's check was sent then).
    """
    pending = doubts.values()
    if pending:
        # Before any other write: settle the checks whose reply was lost (also the probe: the gate decides).
        redis_backend.call(FEATURE, lambda r: settle_doubts(r, pending))
    else:
        # Probe first (no network while the health gate is open): no MongoDB read is spent while Redis is down.
        redis_backend.call(FEATURE, lambda r: r.ping())
    owed_bases, owed_revokes, owed_touched = bases.snapshot(), revokes.snapshot(), touched.snapshot()
    # Claimed, not snapshotted: an $inc taken back by two threads replaying at once would be taken back twice.
    owed_reservations = reservations.take()
    released = False
    try:
        released = not owed_reservations or _release_reservations(owed_reservations)
    finally:
        if not released:
            for item, n in owed_reservations.items():
                reservations.add(item, n)  # retried on the next check
    if owed_revokes or owed_touched:
        redis_backend.call(FEATURE, lambda r: write_index(r, owed_revokes, owed_touched))
        revokes.done(owed_revokes)
        touched.done(owed_touched)
    if owed_bases:
        try:
            docs = usage_coll().find(
                {"key_id": {"$in": sorted({k for k, _, _ in owed_bases})},
                 "day": {"$in": sorted({day_name(d) for _, _, d in owed_bases})}},
                projection={"key_id": 1, "day": 1, "fallback": 1},
            )
        except BackendUnavailable:
            return  # retried on the next check
        counts = {(d["key_id"], d["day"]): int(d.get("fallback", 0) or 0) for d in docs}
        push_bases([(tag, day, counts.get((key_id, day_name(day)), 0)) for key_id, tag, day in owed_bases])
        bases.done(owed_bases)


def settle_doubts(r: Any, settling: list[Doubt]) -> None:
    """Run the resolve script for each doubt (idempotent), recording each outcome as soon as Redis gave it."""
    now = str(int(clock.time()))
    ttl, token_ttl = str(counter_ttl()), str(TOKEN_TTL)
    for d in settling:
        args = [d.writer, str(d.seq), "1" if d.allowed else "0", ttl, now, token_ttl]
        keys = [use_key(d.tag, d.day), token_key(d.tag), undo_key(d.tag, d.day)]
        outcome, first, note = (text(v) for v in _RESOLVE(r, keys, args))
        if "use" in note:
            signing.tampered(FEATURE, use_key(d.tag, d.day), "is not a count (restarted)")
        if "undo" in note:
            signing.tampered(FEATURE, undo_key(d.tag, d.day), "is not a count (restarted)")
        if "tok" in note:
            signing.tampered(FEATURE, token_key(d.tag), "held a malformed writer record (dropped)")
        if doubts.settled(d.writer, d):
            if d.held:
                reservations.add((d.key_id, d.tag, d.day))
            if first == "1":
                touched.add((d.day, f"{d.key_id}:{d.tag}"))
        log.info("hotcache apikeys: check in doubt resolved (%s): %s", d.key_id or "-", outcome)


def _release_reservations(owed_reservations: dict[tuple[str, str, dt.date], int]) -> bool:
    """Take back the ``doubt`` reservations of settled checks (their uses are on Redis now, or were refused).

    In the same update, the day's ``redis`` / ``undone`` copies are raised to Redis's counter as it stands
    (read after settling, as sync_usage copies it): the settled uses leave ``doubt`` and arrive in ``redis`` at
    once, so a fallback deciding meanwhile in another thread or process never sees the day's total drop
    below what Redis has counted (it used to drop to the last sync's copy and allow that many more).
    Returns False when Redis or MongoDB failed (nothing taken back; the caller owes them again).
    """
    pairs = sorted(owed_reservations)
    try:
        values = redis_backend.call(FEATURE, lambda r: read_counters(r, pairs))
    except BackendUnavailable:
        return False
    ops: list[mongo.Update | mongo.Insert] = []
    for (key_id, tag, day), value in zip(pairs, values, strict=True):
        update: dict[str, Any] = {"$inc": {"doubt": -owed_reservations[(key_id, tag, day)]}}
        counted = live_count(tag, day, value)  # None: not a count (counted as tampered), nothing to copy
        if counted is not None and counted[0]:
            gross, undo = counted
            update["$max"] = {"redis": gross, **({"undone": undo} if undo else {})}
        ops.append(mongo.Update({"key_id": key_id, "day": day_name(day)}, update))
    try:
        usage_coll().bulk(ops)
    except BackendUnavailable:
        return False
    return True


def push_bases(items: list[tuple[str, dt.date, int]]) -> int:
    """Raise each (tag, day)'s base to MongoDB's count for it (never lower); the number of bases raised."""
    items = [(tag, day, n) for tag, day, n in items if n > 0]
    if not items:
        return 0
    ttl = str(counter_ttl())

    def push(r: Any) -> int:
        # One script call per key: each key lives in its own hash slot.
        return sum(int(_BASE(r, [base_key(tag, day)], [str(n), ttl])) for tag, day, n in items)

    return redis_backend.call(FEATURE, push)
