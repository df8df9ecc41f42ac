"""check(): validate a key and count one use in one Redis round trip (apikey_check.lua), falling back to MongoDB.

The script reads the cached record, refuses revoked, unknown and expired keys, compares the day's count
with the limit and INCRs only under it; Python verifies the signed value it decided on. A miss loads the
record from MongoDB; a value hotcache did not sign is reloaded and the use it got is given back.
See docs/apikeys.md ("How a check works", "Tampered Redis").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import logging
from typing import Any, NamedTuple

from hotcache import clock, metering, recovery, signing
from hotcache.apikeys import _recovery
from hotcache.apikeys._documents import keys_coll, load_record, synced_redis_count, usage_coll
from hotcache.apikeys._fallback import check_in_doubt, check_on_mongo
from hotcache.apikeys._index import write_index
from hotcache.apikeys._records import (
    TOKEN_TTL,
    Cached,
    base_key,
    count_key,
    counter_ttl,
    day_name,
    meta_key,
    open_meta,
    parse,
    tag_of,
    text,
    use_key,
    writer_key,
)
from hotcache.apikeys._results import FEATURE, Usage, invalid, usage_result
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import RedisUnavailable

__all__ = [
    "Call",
    "Reply",
    "after_failure",
    "check",
    "check_parsed",
    "decided",
    "reply_of",
    "resume",
    "run_check",
    "script_call",
]

log = logging.getLogger("hotcache.apikeys")

_CHECK = redis_backend.Script("apikey_check")
_FIX = redis_backend.Script("apikey_fix")
_ATTEMPTS = 4  # check script calls per check at most (miss, forged record, malformed counter: see check_on_redis)


def check(raw_key: str) -> Usage:
    """Validate ``raw_key`` and count one use; Usage.allowed is False once today's limit is used up.

    Raises InvalidKey (malformed, unknown, revoked or expired) and, with both stores down, MongoUnavailable.
    """
    digest, prefix = parse(raw_key)
    return check_parsed(digest, prefix, clock.utcnow())


def check_parsed(digest: str, prefix: str, now: dt.datetime) -> Usage:
    """check() of a parsed key: what this process owes Redis first, then the check script (and what it needs)."""
    try:
        if _recovery.owed():
            _recovery.settle_and_replay()  # settles this writer's check in doubt (if any) before this check writes
    except RedisUnavailable:  # nothing of this check was sent
        metering.event(FEATURE, "fallback")
        return check_on_mongo(digest, prefix, now)
    return resume(digest, prefix, now, Call(recovery.writer(), _recovery.next_seq()))


def resume(digest: str, prefix: str, now: dt.datetime, call: Call, reply: Reply | None = None) -> Usage:
    """The check from the script call of ``call`` on, falling back to MongoDB when Redis fails. ``reply``: that
    call's answer when it was already sent (the async path's first call, whose answer needs more than a reply)."""
    try:
        return _check_on_redis(digest, prefix, tag_of(digest), now, call, reply)
    except RedisUnavailable as exc:
        return after_failure(exc, digest, prefix, now, call)


def after_failure(exc: RedisUnavailable, digest: str, prefix: str, now: dt.datetime, call: Call) -> Usage:
    """The answer when the script call of ``call`` (or one after it) met an outage: on MongoDB, and when the script
    may have run (a lost reply), in doubt: decided on MongoDB, counted nowhere yet, settled by the next check."""
    metering.event(FEATURE, "fallback")
    if exc.maybe_applied:
        # The script reached Redis, the reply did not come back: decide on MongoDB, count nowhere yet.
        doubt = _recovery.Doubt(call.writer, call.seq, tag_of(digest), now.date())
        return check_in_doubt(digest, prefix, now, doubt)
    return check_on_mongo(digest, prefix, now)


@dataclasses.dataclass(slots=True)
class Call:
    """The writer and sequence number of the check script call in flight (a new one after a give-back)."""

    writer: str
    seq: int


class Reply(NamedTuple):
    """What apikey_check.lua answered."""

    status: str
    used: int
    meta: bytes  # the cached value the script decided on, as stored: Python verifies it (Lua cannot)
    first: bool  # this call created the day's counter
    note: str  # records the script found malformed: "use", "base", "tok"
    time: int  # Redis's clock (seconds) when the script read it, else 0: the base of the "u" of a record cached next


def _check_on_redis(digest: str, prefix: str, tag: str, now: dt.datetime, call: Call, reply: Reply | None) -> Usage:
    """The check script (``reply``: the first call's answer when it was sent already), then what its answer needs:
    the record loaded on a miss, or a repair when Redis held a value hotcache did not sign. Warm: one script call,
    nothing else."""
    today = now.date()
    fill, expect, sent = "", b"", reply
    for _ in range(_ATTEMPTS):
        reply = sent or run_check(tag, today, now, fill=fill, writer=call.writer, seq=call.seq, expect=expect or None)
        sent = None
        usage = decided(reply, digest, prefix, tag, now)
        if usage is not None:
            return usage
        if "tok" in reply.note:
            signing.tampered(FEATURE, writer_key(tag, call.writer), "held a malformed writer record (dropped)")
        if reply.status in ("miss", "old"):
            if reply.status == "old":
                signing.tampered(FEATURE, meta_key(tag), "was used past its validity (written back?)")
            fill = load_record(digest, reply.time)
            continue
        if reply.status == "badcount":  # nothing was done; put MongoDB's counts back, then check again
            replaced = set(reply.note.split()) | _fix_counters(digest, tag, today)
            counters = (("use", count_key(tag, today)), ("base", base_key(tag, today)), ("old", use_key(tag, today)))
            for name, key in counters:
                if name in replaced:
                    signing.tampered(FEATURE, key, "is not a count")
            continue
        if reply.status == "stale":  # cannot happen: each sequence number is sent once (and settled before the next)
            log.error("hotcache apikeys: check refused as stale by redis; counted on MongoDB")
            return check_on_mongo(digest, prefix, now)
        cached = open_meta(tag, reply.meta) if reply.status != "bad" else None
        if cached is not None:
            return _decide(reply, cached, digest, prefix, tag, now)
        # Redis held a value hotcache did not sign (or cannot read): absent. Take back the use the script
        # counted under it, then decide again on the record from MongoDB, cached over the forged value.
        signing.tampered(FEATURE, meta_key(tag), "failed verification" if reply.meta else "is unreadable")
        if reply.status == "ok" and not _give_back(call, tag, today):
            metering.event(FEATURE, "fallback")
            return check_on_mongo(digest, prefix, now)
        fill, expect = load_record(digest, reply.time or _redis_time()), reply.meta
    log.error("hotcache apikeys: redis kept answering with values hotcache did not sign; decided on MongoDB")
    return check_on_mongo(digest, prefix, now)


_DECIDED = frozenset({"ok", "over", "revoked", "unknown", "expired"})  # statuses a verified reply answers alone


def decided(reply: Reply, digest: str, prefix: str, tag: str, now: dt.datetime) -> Usage | None:
    """What a check script's reply answers by itself (InvalidKey raised for a refused key): the warm path's whole
    work, the same for check() and the async path. None when it needs more than the reply (a record to load,
    counters to repair, a value hotcache did not sign, a malformed writer record, today's first use to index):
    check() goes on with it (resume())."""
    if reply.status not in _DECIDED or reply.note or reply.first:
        return None
    cached = open_meta(tag, reply.meta)
    return None if cached is None else _decide(reply, cached, digest, prefix, tag, now)


def _decide(reply: Reply, cached: Cached, digest: str, prefix: str, tag: str, now: dt.datetime) -> Usage:
    """The Usage of a script answer whose cached value verified."""
    if cached.kind != "key":
        raise invalid(cached.kind, prefix)
    if not hmac.compare_digest(cached.digest.encode(), digest.encode()):
        raise invalid("unknown", prefix)
    if reply.status == "expired":
        raise invalid("expired", prefix)
    if reply.status == "ok" and reply.first:
        _mark_touched(now.date(), f"{cached.key_id}:{tag}")
    return usage_result(reply.status == "ok", cached.key_id, cached.owner, reply.used, cached.limit, now)


def _give_back(call: Call, tag: str, day: dt.date) -> bool:
    """Take back the use a check script counted under a forged record: settled like a refused lost check.

    Registered as a doubt first, so a failure here leaves it to be settled before this process's next check;
    False then (the caller decides on MongoDB). On success the next script call gets a new sequence number.
    """
    doubt = _recovery.Doubt(call.writer, call.seq, tag, day)  # allowed=False: "counted but refused" -> taken back
    _recovery.doubts.add(call.writer, doubt)
    try:
        redis_backend.call(FEATURE, lambda r: _recovery.settle_doubts(r, [doubt]))
    except RedisUnavailable:
        return False
    call.seq = _recovery.next_seq()
    return True


def run_check(
    tag: str,
    today: dt.date,
    now: dt.datetime,
    *,
    fill: str,
    writer: str | None = None,
    seq: int | None = None,
    expect: bytes | None = None,
) -> Reply:
    """One call of the check script (``fill``: a value to cache first, '' on the warm path)."""
    writer = writer or recovery.writer()
    seq = seq if seq is not None else _recovery.next_seq()
    keys, args = script_call(tag, today, now, fill, writer, seq, expect)
    return reply_of(redis_backend.call(FEATURE, lambda r: _CHECK(r, keys, args)))


def script_call(
    tag: str, today: dt.date, now: dt.datetime, fill: str, writer: str, seq: int, expect: bytes | None
) -> tuple[list[str], list[Any]]:
    """The keys and arguments of one check script call (run_check's; the async path's warm call)."""
    ttl = int(hotcache_settings.APIKEY_CACHE_TTL)
    if fill.endswith(".unknown"):
        ttl = int(hotcache_settings.APIKEY_INVALID_CACHE_TTL)
    args: list[Any] = [repr(now.timestamp()), str(counter_ttl()), fill, str(ttl), writer, str(seq), str(TOKEN_TTL)]
    if expect is not None:
        args.append(expect)
    keys = [meta_key(tag), count_key(tag, today), writer_key(tag, writer), base_key(tag, today), use_key(tag, today)]
    return keys, args


def reply_of(raw: Any) -> Reply:
    """The check script's raw reply, typed."""
    status, used, meta, first, note, redis_now = raw
    return Reply(
        text(status),
        int(used),
        meta if isinstance(meta, bytes) else str(meta).encode(),
        str(first) == "1",
        text(note),
        int(redis_now),
    )


def _mark_touched(day: dt.date, body: str) -> None:
    """Add a key to the day's touched index (first use of the day only: see docs/apikeys.md, "Sync cost")."""

    def add(r: Any) -> None:
        write_index(r, [], [(day, body)])

    try:
        redis_backend.call(FEATURE, add)
    except RedisUnavailable:  # the use is counted already: never fall back (that would count it twice)
        _recovery.touched.add((day, body))
        log.warning("hotcache apikeys: redis unavailable while indexing today's use; retried on the next check")


def _fix_counters(digest: str, tag: str, day: dt.date) -> set[str]:
    """Replace the day's counters that are not integers by MongoDB's copies (2 queries, 1 script call); the
    names of those replaced ("use", "base", "old").

    The count gets MongoDB's last synced copy of this Redis's uses (uses since that sync are lost, as when
    Redis loses its data) plus the base, the base MongoDB's own count for the day. MongoDB down:
    MongoUnavailable (fail closed).
    """
    doc = keys_coll().find_one({"key_sha256": digest}, projection={"key_id": 1})
    counts = usage_coll().find_one({"key_id": doc["key_id"], "day": day_name(day)}) if doc else None
    copied, undone = synced_redis_count(counts)
    floor, base = max(0, copied - undone), int((counts or {}).get("fallback", 0) or 0)
    args = [str(floor), str(base), str(counter_ttl())]
    keys = [count_key(tag, day), base_key(tag, day), use_key(tag, day)]
    return {text(name) for name in redis_backend.call(FEATURE, lambda r: _FIX(r, keys, args))}


def _redis_time() -> int:
    """Redis's clock (seconds), when a script reply did not carry it (a forged record on the warm path)."""
    return int(redis_backend.call(FEATURE, lambda r: r.time()[0]))
