"""Analytics: event counters in Redis, moved to MongoDB exactly once by the sync.

``track()`` costs one Redis round trip (one Lua script) and no MongoDB operation while Redis is
healthy: it increments ``<event>\\t<path>`` in the hash of the current UTC hour and adds the
visitor to the day's HyperLogLog of that event.

``sync()`` moves closed hours to MongoDB ``analytics_hourly`` with a claim / apply / release protocol:

1. claim: one Lua script RENAMEs each live hour hash to ``pending:<batch id>`` and adds the batch id
   to the pending set (a claim is never orphaned);
2. apply: bulk upserts of ``{_id, batches: {$ne: batch}}`` with ``$inc`` and ``$push batches``, so a
   replayed batch changes nothing; E11000 on replay means the document exists and is re-issued as a
   plain update, which applies (a racing insert by another batch) or matches nothing (already applied);
3. release: DEL the pending key and SREM it only after MongoDB acknowledged every write of the batch.

Every run first re-applies whatever is still pending, so a crash at any step, MongoDB being down, two
syncs at once or a redelivered task leave MongoDB totals equal to the events tracked. The lock only
saves work. Distinct visitors per event and day go to ``analytics_visitors`` with ``$max`` of PFCOUNT.

Redis down: events go through a bounded in-process buffer flushed to MongoDB in bulk (``$inc`` on
the hourly document, guarded by a flush id so a retried flush is applied once). Exactly once while
the process lives; what the buffer held is lost if the process dies; events that do not fit are
dropped, counted (metering event ``dropped``) and logged. Distinct visitors are not counted meanwhile.
Paths past the hour's cap are folded into ``(other)`` as the track script folds them, in the buffer and
again at each flush against a per-hour slot registry in MongoDB (``analytics_hour_slots``), so the cap
holds across processes and flushes (README, "Failure behaviour", states the bound).

Reply lost (Redis got the script, then the connection failed: ``RedisUnavailable.maybe_applied``): the
event may already be counted, so it does not go to the buffer. Each track script also records its call's
token under the writer's key (``w:<process nonce>-<thread>``, TTL ANALYTICS_RETENTION_HOURS: one short
string per writer). The event is kept as the thread's doubt (at most one per thread); the thread's next
track first settles it in one script call: skipped if the writer's key holds its token (nothing else from
that thread ran since, so the token is there exactly when it was applied), applied if the key holds the
writer's previous token, refused if it holds anything else. While Redis still does not answer, new events
take the buffer and the doubt waits. Metering: ``in_doubt``, ``in_doubt_applied``, ``in_doubt_replayed``,
``in_doubt_refused``. Caveat: a process (or thread) that ends with a doubt and no
later call that reaches Redis loses that event (at most one per thread per failure; logged; an exit
handler tries once more); a doubt older than ANALYTICS_RETENTION_HOURS is not counted (``in_doubt_expired``).

Tampering (issue 13): writer tokens, batch markers and the sync lock are sealed with hotcache.signing;
counters cannot be (Lua increments them), so whatever is read back is checked for shape and bounds, and a
key of the wrong type is deleted by the script that meets it. README, "Tampered records".
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import itertools
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple
from urllib.parse import quote

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.urls import path as _route
from django.utils.encoding import escape_uri_path
from django.views.decorators.csrf import csrf_exempt

from hotcache import clock, keys, metering, signing
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import BackendUnavailable, DuplicateKey, InvalidName, MongoWriteError, RedisUnavailable

__all__ = [
    "EVENT_PATTERN",
    "MAX_RAW_PATH_LENGTH",
    "MAX_VISITOR_ID_LENGTH",
    "OVERFLOW",
    "AnalyticsMiddleware",
    "AnalyticsReport",
    "SyncResult",
    "flush_fallback",
    "normalize_path",
    "report",
    "sync",
    "track",
    "track_view",
    "validate_event",
]

log = logging.getLogger("hotcache.analytics")

FEATURE = "analytics"
EVENT_PATTERN = r"[a-z0-9_.\-]{1,64}"  # documented: lower-case letters, digits, _ . -; 1 to 64 characters
OVERFLOW = "(other)"  # path (and event) that collects what the cardinality caps turn away; never a valid name
HOURLY = "analytics_hourly"
VISITORS = "analytics_visitors"
SLOTS = "analytics_hour_slots"  # per-hour counter slots the outage path has taken (the cap across processes)
MAX_CHUNK = 1000  # counters per MongoDB bulk call (one round trip)
_OVERFLOW_SLACK = 100  # extra "<event>\t(other)" fields an hour may hold past the cap
_KEEP_BATCH_IDS = 50  # batch ids remembered per document; a document sees one batch per claim of its hour
_SEP = "\t"  # field separator: never in an event name, and normalize_path() refuses control characters
_MAX_COUNT = 1_000_000
MAX_RAW_PATH_LENGTH = 8192  # characters of a path as given (query included); longer ones are refused
MAX_VISITOR_ID_LENGTH = 128  # characters of a visitor_id or a string user_id
_HOUR_FMT = "%Y%m%d%H"
_DAY_FMT = "%Y%m%d"

# hotcache.signing purposes of the records a process acts on (README: "Tampered records")
_SIGNED_WRITER = "analytics.writer"  # a track call's token under its writer's key
_SIGNED_BATCH = "analytics.batch"  # the marker inside a pending batch: batch id -> its hour
_SIGNED_LOCK = "analytics.lock"  # the sync lock's value

_TRACK = redis_backend.Script("analytics_track")
_CLAIM = redis_backend.Script("analytics_claim")
_UNLOCK = redis_backend.Script("analytics_unlock")
_LOCK = redis_backend.Script("analytics_lock")


# --- names and keys ------------------------------------------------------------------------------


def validate_event(event: object) -> str:
    """The event name if it matches EVENT_PATTERN, else InvalidName (no ':', '*', spaces, newlines...)."""
    return keys.validate_name(event, what="event", pattern=EVENT_PATTERN)


_SLASHES = re.compile(r"/{2,}")
_CUT_ESCAPE = re.compile(r"%[0-9A-Fa-f]?$")


def normalize_path(path: object) -> str:
    """A URL path as counted: no query or fragment, percent-encoded, single slashes, length-capped.

    ``None`` (no path) is ``""``. The raw path first goes through keys.text, the one boundary for free
    text: a non-string, a control character (NUL included), a lone surrogate or more than
    MAX_RAW_PATH_LENGTH characters (query included) raises InvalidName naming ``path``.
    """
    if path is None:
        return ""
    text = keys.text(path, what="path", max_length=MAX_RAW_PATH_LENGTH, allow_empty=True)
    text = text.split("?", 1)[0].split("#", 1)[0]
    # Spaces and non-ASCII become %XX; existing escapes are kept.
    text = quote(text, safe="/-._~!$&'()*+,;=:@%")
    text = "/" + _SLASHES.sub("/", text).lstrip("/")
    limit = int(hotcache_settings.ANALYTICS_MAX_PATH_LENGTH)
    if len(text) > limit:
        text = _CUT_ESCAPE.sub("", text[:limit])
    return text


def _check_visitor_id(visitor_id: object) -> str | None:
    """``visitor_id`` as given (``None`` or ``""``: no visitor id); InvalidName unless it is text keys.text accepts."""
    if visitor_id is None or visitor_id == "":
        return None
    return keys.text(visitor_id, what="visitor_id", max_length=MAX_VISITOR_ID_LENGTH)


def _check_user_id(user_id: object) -> object:
    """``user_id`` as given if it is None, an integer, a UUID or text keys.text accepts; else InvalidName."""
    if user_id is None or isinstance(user_id, uuid.UUID):
        return user_id
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        if not -(2**63) <= user_id < 2**64:
            msg = "user_id is an integer outside the 64-bit range"
            raise InvalidName(msg)
        return user_id
    if isinstance(user_id, str):
        return keys.text(user_id, what="user_id", max_length=MAX_VISITOR_ID_LENGTH)
    msg = f"user_id must be an integer, a string or a UUID, not {type(user_id).__name__}"
    raise InvalidName(msg)


def _check_count(count: object) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= _MAX_COUNT:
        msg = f"count must be an integer from 1 to {_MAX_COUNT}, not {count!r}"
        raise ValueError(msg)
    return count


def _key(*parts: object) -> str:
    # One hash tag for every analytics key: the track and claim scripts touch several of them at once.
    return keys.tagged(FEATURE, "a", *parts)


def _hour_key(hour: str) -> str:
    return _key("h", hour)


def _pending_key(batch: str) -> str:
    return _key("p", batch)


def _hll_key(day: str, event: str) -> str:
    return _key("v", day, event)


class _Indexes(NamedTuple):
    hours: str  # zset: live hour label -> hour start
    pending: str  # set of pending batch ids
    days: str  # zset: day label -> day start (days with visitor HLLs)
    lock: str  # the sync lock


def _index_keys() -> _Indexes:
    return _Indexes(_key("hours"), _key("pending"), _key("days"), _key("lock"))


def _hour_start(ts: float) -> int:
    return int(ts // 3600 * 3600)


def _label_to_hour(label: str) -> dt.datetime:
    return dt.datetime.strptime(label, _HOUR_FMT).replace(tzinfo=dt.UTC)


def _label_to_day(label: str) -> dt.datetime:
    return dt.datetime.strptime(label, _DAY_FMT).replace(tzinfo=dt.UTC)


def _batch_hour(batch: str) -> str:
    return batch.split("-", 1)[0]


def _visitor_digest(user_id: object, visitor_id: object) -> str:
    if user_id is not None:
        raw = f"u:{user_id}"
    elif visitor_id is not None and visitor_id != "":
        raw = f"v:{visitor_id}"
    else:
        return ""
    # Constant size and no raw identifiers sent to Redis (HyperLogLog keeps only hashes anyway).
    return hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def _field(event: str, path: str) -> str:
    return f"{event}{_SEP}{path}"


# --- track ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Doubt:
    """A track call whose script reached Redis but whose reply was lost: applied or not, unknown yet."""

    keys: list[str]
    args: list[Any]  # the call's arguments (ARGV), its sealed token included
    count: int
    event: str
    at: float  # clock.time() of the call
    thread: threading.Thread
    previous: tuple[str, float] | None  # the writer's last token known applied, and when, at the time of the call


# Writers: one per thread of this process ("<process nonce>-<thread ident>"). Each track script records
# its token under the writer's key; at most one doubt per writer. Only the writer's own thread (or, at
# exit, the exiting thread for dead threads) resolves it, before the writer sends anything else.
# Tokens are sealed (hotcache.signing, identity = the writer), so no one without SECRET_KEY can write a
# token the script would take for one of ours; _confirmed remembers each writer's last applied token, so
# the script can tell "not applied" (the key still holds that one) from "someone else wrote the key".
_process_nonce = uuid.uuid4().hex[:12]
_tokens = itertools.count(1)  # unique in this process; the nonce in the writer key makes it unique overall
_doubts: dict[str, _Doubt] = {}
_confirmed: dict[str, tuple[str, float]] = {}  # writer -> (sealed token of its last applied call, when)
_TRACK_ARGS = 14  # ARGV 1-14: the counters; then token, mode, previous token, may-be-missing


def _writer() -> str:
    return f"{_process_nonce}-{threading.get_ident()}"


def _forget_parent_state() -> None:
    # A forked child is a new writer; the parent's doubts are the parent's to resolve.
    global _process_nonce
    _process_nonce = uuid.uuid4().hex[:12]
    _doubts.clear()
    _confirmed.clear()


os.register_at_fork(after_in_child=_forget_parent_state)

# Bits of the track script's "repaired" reply, and what each says was not a value hotcache wrote.
_REPAIRED = (
    (1, 0, "was not a hash (the hour's counters)"),
    (2, 1, "was not a sorted set (the hour index)"),
    (4, 2, "was not a HyperLogLog (the event's visitors)"),
    (8, 3, "was not a HyperLogLog (the overflow visitors)"),
    (16, 4, "was not a set (the day's events)"),
    (32, 5, "was not a sorted set (the day index)"),
    (64, 6, "was not a string (the writer's token)"),
    (128, 0, "held a counter that was not a positive integer"),
)


def _report_repairs(script_keys: list[str], repaired: int) -> None:
    """Count (and log once per key per minute) each record the track script found tampered and reset."""
    for bit, index, why in _REPAIRED:
        if int(repaired) & bit:
            signing.tampered(FEATURE, script_keys[index], f"{why}; reset")


def _resolve(writer: str, doubt: _Doubt) -> bool:
    """Settle ``writer``'s doubt in one script call; False if Redis still does not answer (the doubt stays).

    The script skips the doubt's counters if the writer's key holds its token (applied), applies them if it
    holds the writer's previous token (or nothing, where the key may have expired), and refuses otherwise:
    someone else wrote the key, so applied or not cannot be told and the event is not counted a second time.
    """
    retention = int(hotcache_settings.ANALYTICS_RETENTION_HOURS) * 3600
    if clock.time() - doubt.at >= retention:
        # The token's key has expired with the counters of that time: applied or not can no longer be told.
        _doubts.pop(writer, None)
        metering.event(FEATURE, "in_doubt_expired", doubt.count)
        log.warning("hotcache analytics: %d %s event(s) in doubt for too long; not counted", doubt.count, doubt.event)
        return True
    previous, previous_at = doubt.previous or ("", 0.0)
    # Missing is normal with no previous token, or once the previous one may have expired (its TTL ran
    # from its own call; the doubt's token, had it been applied, would still be there).
    may_be_missing = not previous or clock.time() - previous_at >= retention - 60
    args = [*doubt.args[:_TRACK_ARGS], doubt.args[_TRACK_ARGS], "1", previous, "1" if may_be_missing else "0"]
    try:
        reply = redis_backend.call(FEATURE, lambda r: _TRACK(r, doubt.keys, args))
    except RedisUnavailable:
        return False  # a lost reply again changes nothing: same token, same question next time
    _, _, outcome, repaired, found = reply
    refused = int(outcome) == 2
    # A writer key of the wrong type is reported once, as the refusal below.
    _report_repairs(doubt.keys, int(repaired) & ~64 if refused else int(repaired))
    _doubts.pop(writer, None)
    if refused:
        why = "holds a token of this writer older than its last call (Redis lost writes?)"
        if not found:
            why = "is missing though this writer's last token cannot have expired"
        elif signing.unseal(_SIGNED_WRITER, writer, found) is None:
            why = "holds a value hotcache never wrote"
        signing.tampered(FEATURE, doubt.keys[6], f"{why}; the call in doubt is not counted")
        metering.event(FEATURE, "in_doubt_refused", doubt.count)
        _confirmed.pop(writer, None)
        return True
    _confirmed[writer] = (doubt.args[_TRACK_ARGS], doubt.at)
    metering.event(FEATURE, "tracked", doubt.count)
    metering.event(FEATURE, "in_doubt_applied" if int(outcome) == 1 else "in_doubt_replayed", doubt.count)
    return True


def _resolve_doubts_at_exit() -> None:
    """Best effort at interpreter exit: settle the doubts of this thread and of threads that have ended."""
    me = threading.current_thread()
    for writer, doubt in list(_doubts.items()):
        if (doubt.thread is me or not doubt.thread.is_alive()) and not _resolve(writer, doubt):
            log.warning("hotcache analytics: exit with %d %s event(s) in doubt; not counted", doubt.count, doubt.event)


@dataclass(frozen=True, slots=True)
class _Event:
    """A validated track call: what the Redis script and the outage buffer count."""

    event: str
    path: str  # normalised
    visitor: str  # digest of the user or visitor id; "" for none
    count: int


def track(
    event: str,
    *,
    path: str | None = None,
    user_id: object = None,
    visitor_id: str | None = None,
    count: int = 1,
) -> str:
    """Count ``count`` occurrences of ``event`` on ``path`` in the current UTC hour; add the visitor to the day's
    distinct visitors (``user_id`` wins over ``visitor_id``). Returns "redis", "fallback", "dropped", or
    "in_doubt" (the reply was lost after Redis got the script: settled by this thread's next call).

    Raises InvalidName for a bad event name, path, user_id or visitor_id (see normalize_path and the
    README), ValueError for a bad count; never for an outage.
    """
    event = validate_event(event)
    norm = normalize_path(path)
    visitor = _visitor_digest(_check_user_id(user_id), _check_visitor_id(visitor_id))
    return _track(_Event(event, norm, visitor, _check_count(count)))


def _track(ev: _Event) -> str:
    event, norm, count = ev.event, ev.path, ev.count
    now = clock.time()
    hour_start = _hour_start(now)
    day_start = int(now // 86400 * 86400)
    when = dt.datetime.fromtimestamp(hour_start, tz=dt.UTC)
    hour, day = when.strftime(_HOUR_FMT), when.strftime(_DAY_FMT)
    hours_key, days_key = _key("hours"), _key("days")  # as _index_keys() builds them, without the other two
    script_keys = [
        _hour_key(hour),
        hours_key,
        _hll_key(day, event),
        _hll_key(day, OVERFLOW),
        _key("ev", day),
        days_key,
    ]
    args = [
        _field(event, norm),
        _field(event, OVERFLOW),
        _field(OVERFLOW, OVERFLOW),
        count,
        int(hotcache_settings.ANALYTICS_MAX_COUNTERS_PER_HOUR),
        _OVERFLOW_SLACK,
        int(hotcache_settings.ANALYTICS_RETENTION_HOURS) * 3600,
        hour,
        hour_start,
        ev.visitor,
        event,
        int(hotcache_settings.ANALYTICS_MAX_EVENTS_PER_DAY),
        day,
        day_start,
    ]
    writer = _writer()
    doubt = _doubts.get(writer) if _doubts else None
    if doubt is not None and not _resolve(writer, doubt):
        # Redis still does not answer: this event takes the outage path; the doubt waits for the next call.
        return _fallback.add((hour, event, norm), count)
    script_keys.append(_key("w", writer))
    token = signing.seal(_SIGNED_WRITER, writer, str(next(_tokens)))
    args += [token, "0", "", "0"]
    try:
        level, visitor_overflow, _, repaired, _ = redis_backend.call(
            FEATURE, lambda r: _TRACK(r, script_keys, args)
        )
    except RedisUnavailable as exc:
        if exc.maybe_applied:
            # The script reached Redis and only the reply was lost: it may have been counted. The buffer
            # would count it again, so it waits as this thread's doubt (see the module docstring).
            previous = _confirmed.get(writer)
            _doubts[writer] = _Doubt(script_keys, args, count, event, now, threading.current_thread(), previous)
            metering.event(FEATURE, "in_doubt", count)
            log.warning("hotcache analytics: reply to a track call lost; %d %s event(s) in doubt", count, event)
            return "in_doubt"
        return _fallback.add((hour, event, norm), count)
    _confirmed[writer] = (token, now)
    if repaired:
        _report_repairs(script_keys, repaired)
    metering.event(FEATURE, "tracked", count)
    if level:
        metering.event(FEATURE, "overflow")
    if visitor_overflow:
        metering.event(FEATURE, "visitor_overflow")
    if _fallback.has_data():
        # Leftovers of an outage reach MongoDB on the next due flush (the only MongoDB work after recovery).
        _fallback.flush_if_due()
    return "redis"


# --- MongoDB writes ------------------------------------------------------------------------------


def _hourly_indexes(coll: mongo.Collection) -> None:
    # The report's range queries: all events by hour, or one event by hour.
    coll.create_index([("hour", mongo.ASCENDING), ("event", mongo.ASCENDING)], name="hour_event")
    coll.create_index([("event", mongo.ASCENDING), ("hour", mongo.ASCENDING)], name="event_hour")


def _visitors_indexes(coll: mongo.Collection) -> None:
    coll.create_index([("day", mongo.ASCENDING)], name="day")


def _hourly_collection() -> mongo.Collection:
    return mongo.ensure_indexes(HOURLY, feature=FEATURE, create=_hourly_indexes)


def _visitors_collection() -> mongo.Collection:
    return mongo.ensure_indexes(VISITORS, feature=FEATURE, create=_visitors_indexes)


def _doc_id(hour: str, event: str, path: str) -> str:
    return f"{hour}|{event}|{path}"


def _counter_op(batch: str, hour: str, event: str, path: str, n: int, *, ids: str = "batches") -> mongo.Update:
    """``$inc`` guarded by the batch id: a replay matches nothing (or hits E11000 on ``_id``).

    Sync batches are remembered in ``batches``, outage-buffer flushes in ``flushes``, so a long outage's
    many flushes cannot push a pending sync batch out of the window that makes its replay harmless.
    """
    return mongo.Update(
        {"_id": _doc_id(hour, event, path), ids: {"$ne": batch}},
        {
            "$inc": {"count": n},
            "$push": {ids: {"$each": [batch], "$slice": -_KEEP_BATCH_IDS}},
            "$setOnInsert": {"hour": _label_to_hour(hour), "event": event, "path": path},
        },
        upsert=True,
    )


@dataclass(slots=True)
class _WriteStats:
    round_trips: int = 0
    applied: int = 0


def _bulk(coll: mongo.Collection, ops: list[mongo.Update], stats: _WriteStats) -> None:
    """One bulk call (plus one more only if some upserts hit E11000). Raises on an unacknowledged write."""
    result = coll.bulk(ops, ordered=False)
    stats.round_trips += 1
    stats.applied += result.modified + result.upserted
    if result.duplicates:
        # E11000 proves the document exists. As a plain update the op either applies (another batch
        # inserted the document first) or matches nothing (this batch is already in ``batches``).
        retry = [mongo.Update(ops[i].filter, ops[i].update, upsert=False) for i in result.duplicates]
        again = coll.bulk(retry, ordered=False)
        stats.round_trips += 1
        stats.applied += again.modified


# --- Redis-down fallback -------------------------------------------------------------------------


_Key = tuple[str, str, str]  # (hour label, event, path) of a buffered counter


def _fold(hour_fields: int, has: Callable[[str, str], bool], event: str, path: str) -> tuple[str, str, int]:
    """Where a new counter goes, as analytics_track.lua decides it: its own (event, path) while the hour has
    fewer than ANALYTICS_MAX_COUNTERS_PER_HOUR fields, then the event's ``(other)`` path while it has fewer
    than cap + slack, then the one global ``(other)`` counter. Returns (event, path, overflow level 0|1|2)."""
    cap = int(hotcache_settings.ANALYTICS_MAX_COUNTERS_PER_HOUR)
    if has(event, path) or hour_fields < cap:
        return event, path, 0
    if has(event, OVERFLOW) or hour_fields < cap + _OVERFLOW_SLACK:
        return event, OVERFLOW, 1
    return OVERFLOW, OVERFLOW, 2


def _retention_cutoff() -> float:
    """Counters of hours that ended before this moment are past ANALYTICS_RETENTION_HOURS (Redis expired them)."""
    return clock.time() - int(hotcache_settings.ANALYTICS_RETENTION_HOURS) * 3600


def _slots_indexes(coll: mongo.Collection) -> None:
    # A registry document is needed while a buffer may still write its hour (the retention); then it goes.
    coll.create_index([("expires", mongo.ASCENDING)], expire_after_seconds=0, name="expires")


def _slots_collection() -> mongo.Collection:
    return mongo.ensure_indexes(SLOTS, feature=FEATURE, create=_slots_indexes)


def _reserve_slots(hour: str, tier: str, wanted: int, limit: int) -> int:
    """Take ``wanted`` slots of ``tier`` ("own" or "other") for ``hour`` from the MongoDB registry, shared by
    every process; returns how many of them fall within ``limit``. One atomic ``$inc``: concurrent flushes
    never hand out the same slot. A slot taken but not used (a race on the same new path, a lost reply)
    is simply wasted: the bound only gets tighter."""
    expires = _label_to_hour(hour) + dt.timedelta(hours=int(hotcache_settings.ANALYTICS_RETENTION_HOURS) + 2)
    coll = _slots_collection()
    update = {"$inc": {tier: wanted}, "$setOnInsert": {"expires": expires}}
    try:
        doc = coll.find_one_and_update({"_id": hour}, update, upsert=True)
    except DuplicateKey:  # two first upserts of the hour raced; the document exists now
        doc = coll.find_one_and_update({"_id": hour}, update, upsert=True)
    after = int((doc or {}).get(tier, wanted))
    return max(0, min(wanted, limit - (after - wanted)))


def _within_hour_caps(counts: dict[_Key, int]) -> dict[_Key, int]:
    """Fold a flush's counters so that the outage path, over every process and flush, gives an hour at most
    cap + slack + 1 documents in analytics_hourly (cap + 1 with one event name), like the Redis path.

    Counters whose document exists already need no slot. New (event, path) documents take "own" slots
    (at most the cap per hour); the refused ones go to the event's ``(other)`` document, which takes an
    "other" slot if it is new (at most the slack per hour), else to the global ``(other)`` document.
    MongoDB: one find, one ``$inc`` per hour with new paths, one more only past the cap.
    """
    cap = int(hotcache_settings.ANALYTICS_MAX_COUNTERS_PER_HOUR)
    ids = {_doc_id(h, e, p) for h, e, p in counts} | {_doc_id(h, e, OVERFLOW) for h, e, _ in counts}
    found = _hourly_collection().find({"_id": {"$in": sorted(ids)}}, projection={"_id": 1})
    existing = {d["_id"] for d in found}
    by_hour: dict[str, list[_Key]] = {}
    for key in counts:  # insertion order: the first paths of the hour keep their own counter, as in Redis
        by_hour.setdefault(key[0], []).append(key)
    out: dict[_Key, int] = {}
    for hour, hour_keys in by_hour.items():
        new_own = [k for k in hour_keys if OVERFLOW not in k[1:] and _doc_id(*k) not in existing]
        granted = _reserve_slots(hour, "own", len(new_own), cap) if new_own else 0
        refused = set(new_own[granted:])
        to_other = [k for k in hour_keys if k in refused or (k[2] == OVERFLOW and k[1] != OVERFLOW)]
        new_other = list(dict.fromkeys(e for _, e, _ in to_other if _doc_id(hour, e, OVERFLOW) not in existing))
        granted_other = _reserve_slots(hour, "other", len(new_other), _OVERFLOW_SLACK) if new_other else 0
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


@dataclass(slots=True)
class _Flush:
    """Counters on their way to MongoDB under one flush id; retried with the same id until acknowledged."""

    id: str
    counts: dict[_Key, int]
    folded: bool = False  # slots taken and counters folded: a retry must send exactly the same operations


class _FallbackBuffer:
    """Bounded in-process counters for the Redis outage path, flushed to MongoDB in bulk.

    ``_counts`` takes new events, folded past the hour's cap as the Redis script folds them; a flush moves
    them to ``_inflight`` under a fresh flush id, folds them again against the hour's slot registry in
    MongoDB (the cap across processes and flushes), and an unacknowledged flush is retried with the same
    id and the same counters (so it is applied once). Memory: at most 2 x ANALYTICS_FALLBACK_BUFFER_SIZE
    counters. Counters of hours past ANALYTICS_RETENTION_HOURS are dropped, as Redis expires them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._counts: dict[_Key, int] = {}
        self._fields: dict[str, int] = {}  # counters per hour in _counts (what HLEN is to the Redis script)
        self._inflight: _Flush | None = None
        self._last_flush = clock.monotonic()

    def has_data(self) -> bool:
        return bool(self._counts) or self._inflight is not None

    def clear(self) -> None:
        with self._lock:
            self._counts = {}
            self._fields = {}
            self._inflight = None
            self._last_flush = clock.monotonic()

    def _offer(self, key: _Key, n: int) -> int | None:
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

    def add(self, key: _Key, n: int) -> str:
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
                    _drop_expired(inflight)
                    inflight.counts = _within_hour_caps(inflight.counts) if inflight.counts else {}
                    inflight.folded = True
                ops = [_counter_op(inflight.id, h, e, p, n, ids="flushes") for (h, e, p), n in inflight.counts.items()]
                stats = _WriteStats()
                coll = _hourly_collection()
                for i in range(0, len(ops), MAX_CHUNK):
                    _bulk(coll, ops[i : i + MAX_CHUNK], stats)
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


def _drop_expired(flush: _Flush) -> None:
    """Drop counters of hours past the retention: Redis would have expired them, and their hour's slot
    registry may be gone, so writing them could break the hour's cap."""
    cutoff = _retention_cutoff()
    old = {k: n for k, n in flush.counts.items() if _label_to_hour(k[0]).timestamp() + 3600 <= cutoff}
    if old:
        flush.counts = {k: n for k, n in flush.counts.items() if k not in old}
        metering.event(FEATURE, "dropped", sum(old.values()))
        log.warning(
            "hotcache analytics: dropped %d buffered event(s) older than ANALYTICS_RETENTION_HOURS", sum(old.values())
        )


_fallback = _FallbackBuffer()


def flush_fallback() -> int:
    """Flush this process's Redis-outage buffer to MongoDB now; returns counters written."""
    return _fallback.flush()


def _flush_at_exit() -> None:
    try:
        if _doubts:
            _resolve_doubts_at_exit()
        if _fallback.has_data():
            _fallback.flush()
    except Exception:
        log.warning("hotcache analytics: fallback flush at exit failed", exc_info=True)


atexit.register(_flush_at_exit)


# --- sync ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyncResult:
    dry_run: bool
    hours_claimed: int  # live hour hashes claimed by this run
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
    tampered: int = 0  # Redis records this run refused or reset as not written by hotcache (README)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _checkpoint(step: str) -> None:
    """Named points of the sync (before_claim, after_claim, before_apply, after_chunk, before_release).

    Tests replace it to inject a crash or hold two runs at the same point; it does nothing in production.
    """


def sync(
    include_current_hour: bool = False,
    dry_run: bool = False,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> SyncResult:
    """Move counters of closed hours (and leftovers of earlier runs) into MongoDB exactly once.

    ``progress(done, total)`` is called after each MongoDB bulk write. Outages end the run early with
    ``error`` set and the claimed batches left pending for the next run; nothing is lost or doubled.
    """
    if not dry_run and _fallback.has_data():
        _fallback.flush()  # this process's outage buffer, if any (best effort; it keeps what fails)
    state: dict[str, Any] = {
        "dry_run": dry_run,
        "hours_claimed": 0,
        "batches": 0,
        "recovered": 0,
        "counters": 0,
        "events": 0,
        "applied": 0,
        "mongo_round_trips": 0,
        "visitor_counts": 0,
        "days_closed": 0,
        "pending_left": 0,
    }
    tally = _Tally()
    token = signing.seal(_SIGNED_LOCK, _index_keys().lock, uuid.uuid4().hex)
    locked = False
    try:
        if dry_run:
            _dry_run(state, include_current_hour, tally)
            return SyncResult(**state, tampered=tally.n)
        locked = _lock(token, tally)
        if not locked:
            return SyncResult(**state, locked_out=True, tampered=tally.n)
        _sync_counters(state, include_current_hour, progress, tally)
        _sync_visitors(state, tally)
    except (BackendUnavailable, MongoWriteError) as exc:
        log.warning("hotcache analytics: sync stopped, pending batches stay for the next run: %s", exc)
        state["error"] = f"{type(exc).__name__}: {exc}"
        state["pending_left"] = _pending_count()
    finally:
        if locked:
            _unlock(token)
    if state["counters"]:
        metering.event(FEATURE, "synced_counters", state["counters"])
    return SyncResult(**state, tampered=tally.n)


def _lock(token: str, tally: _Tally) -> bool:
    """Take the sync lock with this run's sealed ``token``. A lock hotcache did not write (not sealed, no expiry,
    longer than the timeout, wrong type) is tampered: it is taken over, so it cannot stop every sync."""
    timeout_ms = int(hotcache_settings.ANALYTICS_SYNC_LOCK_TIMEOUT) * 1000
    if timeout_ms <= 0:
        return True  # lock disabled: the protocol alone keeps the totals exact
    lock_key = _index_keys().lock
    reply = redis_backend.call(FEATURE, lambda r: _LOCK(r, [lock_key], [token, timeout_ms, ""]))
    if int(reply[0]):
        return True
    _, value, pttl, kind = reply
    if _text(kind) == "string" and signing.unseal(_SIGNED_LOCK, lock_key, value) and 0 < int(pttl) <= timeout_ms:
        return False  # another run holds it
    tally(lock_key, "is not a sync lock hotcache wrote (unsigned, wrong type, or outliving the timeout); taken over")
    refused = value if _text(kind) == "string" else "!"
    reply = redis_backend.call(FEATURE, lambda r: _LOCK(r, [lock_key], [token, timeout_ms, refused]))
    return bool(int(reply[0]))


def _unlock(token: str) -> None:
    if int(hotcache_settings.ANALYTICS_SYNC_LOCK_TIMEOUT) <= 0:
        return
    lock_key = _index_keys().lock
    try:
        redis_backend.call(FEATURE, lambda r: _UNLOCK(r, [lock_key], [token]))
    except RedisUnavailable:
        log.warning("hotcache analytics: could not release the sync lock; it expires by itself")


def _pending_count() -> int | None:
    """Batches in the pending set; None when Redis does not answer (then nobody can tell)."""
    pending_key = _index_keys().pending
    try:
        (n,) = _read_many(lambda pipe: pipe.scard(pending_key))
    except RedisUnavailable:
        return None
    return 0 if isinstance(n, Exception) else int(n)


def _claimable_hours(include_current_hour: bool, tally: _Tally) -> tuple[list[str], list[Any]]:
    """Hour labels of the hour index due for a claim, and the members that are no hour label (tampered)."""
    hours_key = _index_keys().hours
    if include_current_hour:
        cutoff: float | str = "+inf"
    else:
        cutoff = clock.time() - 3600 - float(hotcache_settings.ANALYTICS_SYNC_GRACE)
    (raw,) = _read_many(lambda pipe: pipe.zrangebyscore(hours_key, "-inf", cutoff, start=0, num=10_000))
    return _valid_members(hours_key, raw, _is_hour, tally)


def _sync_counters(
    state: dict[str, Any], include_current_hour: bool, progress: Callable[[int, int], None] | None, tally: _Tally
) -> None:
    idx = _index_keys()
    ttl = int(hotcache_settings.ANALYTICS_RETENTION_HOURS) * 3600
    _checkpoint("before_claim")
    hours, stray_hours = _claimable_hours(include_current_hour, tally)
    (raw_before,) = _read_many(lambda pipe: pipe.smembers(idx.pending))
    before = set(_valid_members(idx.pending, raw_before, _is_batch, _Tally(silent=True))[0])  # claim reports it
    claim_keys = [idx.hours, idx.pending]
    claim_args: list[Any] = [ttl, _MARKER]
    for hour in hours:
        batch = f"{hour}-{uuid.uuid4().hex[:16]}"
        claim_keys += [_hour_key(hour), _pending_key(batch)]
        # The marker binds the batch id to its hour under SECRET_KEY: a hash swapped with another batch's, or
        # a pending id someone added, has no valid marker and is refused.
        claim_args += [hour, batch, signing.seal(_SIGNED_BATCH, batch, hour)]
    repaired, raw_pending = redis_backend.call(FEATURE, lambda r: _CLAIM(r, claim_keys, claim_args))
    for _ in range(int(repaired)):
        tally(idx.pending, "claim found an analytics index or hour hash of the wrong type; deleted")
    pending, stray_batches = _valid_members(idx.pending, raw_pending, _is_batch, tally)
    pending.sort()
    if stray_hours or stray_batches:
        _remove_members(hours=stray_hours, batches=stray_batches)
    state["hours_claimed"] = len(set(pending) - before)
    _checkpoint("after_claim")

    chunk_size = min(MAX_CHUNK, int(hotcache_settings.ANALYTICS_SYNC_CHUNK))
    coll = _hourly_collection()
    stats = _WriteStats()
    # Read every pending batch in one pipelined round trip and write counters in chunks that may span
    # batches, so many small hours still cost one MongoDB round trip per chunk_size counters.
    raws = _read_many(lambda pipe: [pipe.hgetall(_pending_key(b)) for b in pending]) if pending else []
    batches: dict[str, dict[tuple[str, str], int]] = {}
    refused: list[str] = []
    for batch, raw in zip(pending, raws, strict=True):
        counters = _counters(_pending_key(batch), raw, tally, batch=batch)
        if counters is None:
            refused.append(batch)  # not a batch hotcache claimed: released unapplied
        else:
            batches[batch] = counters
    ops: list[tuple[str, mongo.Update]] = []
    for batch, counters in batches.items():
        hour = _batch_hour(batch)
        for (event, path), n in counters.items():
            ops.append((batch, _counter_op(batch, hour, event, path, n)))
            state["events"] += n
    total = len(ops)
    _checkpoint("before_apply")
    last_op_of: dict[str, int] = {}
    for i, (batch, _) in enumerate(ops):
        last_op_of[batch] = i
    empty = [b for b in batches if b not in last_op_of]  # expired or empty pending keys: nothing to apply
    released = _release(empty) if empty else 0
    if refused:
        _release(refused)
    for start in range(0, total, chunk_size):
        chunk = ops[start : start + chunk_size]
        _bulk(coll, [op for _, op in chunk], stats)
        state["mongo_round_trips"] = stats.round_trips
        state["counters"] = start + len(chunk)
        state["applied"] = stats.applied
        _checkpoint("after_chunk")
        end = start + len(chunk) - 1
        done = [b for b, last in last_op_of.items() if start <= last <= end]
        if done:
            _checkpoint("before_release")
            released += _release(done)
        if progress:
            progress(start + len(chunk), total)
    state["batches"] = released
    state["recovered"] = len(before & set(batches))


def _release(batches: list[str]) -> int:
    """DEL the pending keys and SREM them from the pending set, atomically (MULTI): only after MongoDB acked."""
    pending_set = _index_keys().pending

    def run(r: Any) -> Any:
        pipe = r.pipeline(transaction=True)
        pipe.delete(*[_pending_key(b) for b in batches])
        pipe.srem(pending_set, *batches)
        return pipe.execute()

    redis_backend.call(FEATURE, run)
    return len(batches)


def _remove_members(*, hours: Sequence[Any] = (), batches: Sequence[Any] = (), days: Sequence[Any] = ()) -> None:
    """Take members that are no hour label, batch id or day label out of the indexes (as Redis returned them)."""
    idx = _index_keys()

    def run(r: Any) -> Any:
        pipe = r.pipeline(transaction=False)
        if hours:
            pipe.zrem(idx.hours, *hours)
        if batches:
            pipe.srem(idx.pending, *batches)
        if days:
            pipe.zrem(idx.days, *days)
        return pipe.execute(raise_on_error=False)

    redis_backend.call(FEATURE, run)


def _day_counts(days: list[str], tally: _Tally) -> dict[tuple[str, str], int]:
    """{(day, event): PFCOUNT} for the given days, in two pipelined round trips.

    Event names that are not valid, a day's events past ANALYTICS_MAX_EVENTS_PER_DAY + 1, and sets or
    HyperLogLogs Redis refuses to read are left out and counted as tampered.
    """
    if not days:
        return {}
    per_day = _read_many(lambda pipe: [pipe.smembers(_key("ev", d)) for d in days])
    limit = int(hotcache_settings.ANALYTICS_MAX_EVENTS_PER_DAY) + 1
    pairs: list[tuple[str, str]] = []
    for d, raw in zip(days, per_day, strict=True):
        events = sorted(_valid_members(_key("ev", d), raw, _is_event, tally)[0])
        if len(events) > limit:
            tally(_key("ev", d), f"holds {len(events)} event names; at most {limit} are read")
            events = [OVERFLOW, *(e for e in events if e != OVERFLOW)][:limit]
        pairs += [(d, e) for e in events]
    if not pairs:
        return {}
    counts = _read_many(lambda pipe: [pipe.pfcount(_hll_key(d, e)) for d, e in pairs])
    out: dict[tuple[str, str], int] = {}
    for (d, e), n in zip(pairs, counts, strict=True):
        if isinstance(n, Exception) or not isinstance(n, int):
            tally(_hll_key(d, e), "is not a HyperLogLog")
        else:
            out[(d, e)] = n
    return out


def _sync_visitors(state: dict[str, Any], tally: _Tally) -> None:
    days_key = _index_keys().days
    (raw_days,) = _read_many(lambda pipe: pipe.zrange(days_key, 0, -1))
    days, stray_days = _valid_members(days_key, raw_days, _is_day, tally)
    if stray_days:
        _remove_members(days=stray_days)
    counts = _day_counts(days, tally)
    if counts:
        ops = [
            mongo.Update(
                {"_id": f"{d}|{e}"},
                # $max: replays and racing syncs only ever raise the count to what Redis said.
                {"$max": {"count": n}, "$setOnInsert": {"day": _label_to_day(d), "event": e}},
                upsert=True,
            )
            for (d, e), n in counts.items()
        ]
        coll = _visitors_collection()
        stats = _WriteStats()
        for i in range(0, len(ops), MAX_CHUNK):
            _bulk(coll, ops[i : i + MAX_CHUNK], stats)
        state["mongo_round_trips"] += stats.round_trips
        state["visitor_counts"] = len(ops)
    # A day is over (no event can reach it) once its end plus the grace has passed: drop its HLLs.
    cutoff = clock.time() - 86400 - float(hotcache_settings.ANALYTICS_SYNC_GRACE)
    closed = [d for d in days if _label_to_day(d).timestamp() <= cutoff]
    if closed:

        def drop(r: Any) -> Any:
            pipe = r.pipeline(transaction=True)
            for d in closed:
                events = [e for (day, e) in counts if day == d]
                pipe.delete(_key("ev", d), *[_hll_key(d, e) for e in events])
            pipe.zrem(days_key, *closed)
            return pipe.execute()

        redis_backend.call(FEATURE, drop)
        state["days_closed"] = len(closed)


def _read_counters(hours: list[str], pending: list[str]) -> list[Any]:
    """The live hour hashes, then the pending batch hashes, in one pipelined round trip (none if both are empty);
    a key Redis refuses to read as a hash gives its error in place of the hash."""
    if not hours and not pending:
        return []
    return _read_many(
        lambda pipe: [pipe.hgetall(_hour_key(h)) for h in hours] + [pipe.hgetall(_pending_key(b)) for b in pending]
    )


def _dry_run(state: dict[str, Any], include_current_hour: bool, tally: _Tally) -> None:
    """What a sync would move now: closed live hours plus pending batches, read only."""
    idx = _index_keys()
    hours, _ = _claimable_hours(include_current_hour, tally)
    (raw_pending,) = _read_many(lambda pipe: pipe.smembers(idx.pending))
    pending, _ = _valid_members(idx.pending, raw_pending, _is_batch, tally)

    rows = _read_counters(hours, pending)
    keys_ = [*(_hour_key(h) for h in hours), *(_pending_key(b) for b in pending)]
    batch_of = [*(None for _ in hours), *pending]
    for key, batch, raw in zip(keys_, batch_of, rows, strict=True):
        counters = _counters(key, raw, tally, batch=batch) or {}
        state["counters"] += len(counters)
        state["events"] += sum(counters.values())
    state["hours_claimed"] = sum(1 for raw in rows[: len(hours)] if raw)
    state["batches"] = len(pending)
    state["recovered"] = len(pending)
    (raw_days,) = _read_many(lambda pipe: pipe.zrange(idx.days, 0, -1))
    state["visitor_counts"] = len(_day_counts(_valid_members(idx.days, raw_days, _is_day, tally)[0], tally))
    state["pending_left"] = len(pending)


# --- Redis records: read back, checked ------------------------------------------------------------
#
# Counters (hour hashes, HyperLogLogs) are incremented inside Lua, which cannot compute an HMAC, so they
# carry no signature: what is checked is their shape (a valid event, a normalised path, a positive integer,
# no more of them than the caps allow). Records that decide something are sealed with hotcache.signing:
# the writer tokens (track), the batch markers (sync) and the lock. README: "Tampered records".

_MARKER = "!batch"  # field of a pending batch holding its sealed marker; no counter field lacks the tab
_HOUR_LABEL = re.compile(r"\d{10}")
_DAY_LABEL = re.compile(r"\d{8}")
_BATCH_ID = re.compile(r"\d{10}-[0-9a-f]{16}")
_EVENT_NAME = re.compile(EVENT_PATTERN)
_STORED_PATH = re.compile(r"/[A-Za-z0-9_.~!$&'()*+,;=:@%/\-]{0,1023}")  # what normalize_path() can return
_MAX_STORED_COUNT = 2**53  # far above any hour's real total; HINCRBY would be near overflow


@dataclass(slots=True)
class _Tally:
    """Counts the records one operation refused, and reports each through signing.tampered (unless ``silent``:
    a second look at records another step reports)."""

    n: int = 0
    silent: bool = False

    def __call__(self, key: str, why: str) -> None:
        self.n += 1
        if not self.silent:
            signing.tampered(FEATURE, key, why)


def _read_many(fill: Callable[[Any], Any]) -> list[Any]:
    """Read commands queued by ``fill(pipeline)`` in one round trip. A command Redis refuses (WRONGTYPE, a
    corrupt HyperLogLog: a tampered key) gives its error in place of the reply instead of failing the
    whole call; an outage still raises RedisUnavailable."""

    def run(r: Any) -> Any:
        pipe = r.pipeline(transaction=False)
        fill(pipe)
        return pipe.execute(raise_on_error=False)

    return redis_backend.call(FEATURE, run)


def _text(value: object) -> str | None:
    """A value Redis returned as text, or None if it is not UTF-8 (or not a string at all)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _is_hour(label: str) -> bool:
    try:
        return bool(_HOUR_LABEL.fullmatch(label)) and bool(_label_to_hour(label))
    except ValueError:
        return False


def _is_day(label: str) -> bool:
    try:
        return bool(_DAY_LABEL.fullmatch(label)) and bool(_label_to_day(label))
    except ValueError:
        return False


def _is_batch(batch: str) -> bool:
    return bool(_BATCH_ID.fullmatch(batch)) and _is_hour(_batch_hour(batch))


def _is_event(name: str) -> bool:
    return name == OVERFLOW or bool(_EVENT_NAME.fullmatch(name))


def _valid_members(
    key: str, raw: object, valid: Callable[[str], bool], tally: _Tally
) -> tuple[list[str], list[Any]]:
    """The members of a set or zset that ``valid`` accepts, decoded, and the others as Redis returned them
    (each counted as tampered). A key that is not a set/zset at all reads as empty (and is counted)."""
    if isinstance(raw, Exception):
        tally(key, "is not a set of the right type")
        return [], []
    good: list[str] = []
    bad: list[Any] = []
    for member in raw if isinstance(raw, list | set) else ():
        text = _text(member)
        if text is not None and valid(text):
            good.append(text)
        else:
            bad.append(member)
            tally(key, "holds a member hotcache never wrote")
    return good, bad


def _counter(field: object, value: object) -> tuple[tuple[str, str], int] | None:
    """((event, path), count) of an hour hash field as the track script writes it, or None."""
    name, number = _text(field), _text(value)
    if name is None or number is None:
        return None
    event, sep, path = name.partition(_SEP)
    if not sep or not _is_event(event):
        return None
    if event == OVERFLOW and path != OVERFLOW:
        return None
    if path not in ("", OVERFLOW) and not _STORED_PATH.fullmatch(path):
        return None
    if not (number.isascii() and number.isdigit() and len(number) <= 16):
        return None
    n = int(number)
    return ((event, path), n) if 1 <= n <= _MAX_STORED_COUNT else None


def _counters(
    key: str, raw: object, tally: _Tally, *, batch: str | None = None
) -> dict[tuple[str, str], int] | None:
    """The counters of an hour hash (or of pending ``batch``) as Redis returned them; None if the record is
    refused: not a hash, or a batch without the sealed marker of its id and hour (swapped, forged, or
    claimed before markers existed). Fields that are not counters track writes are left out; past
    cap + slack + 1 fields the rest are summed into the global (other) counter (a Redis hash never holds
    more), so no record can make the sync write more documents than the Redis path. Counted as tampered.
    """
    if isinstance(raw, Exception) or not isinstance(raw, dict):
        tally(key, "is not a hash of counters")
        return None
    fields = dict(raw)
    if batch is not None and fields:
        marker = fields.pop(_MARKER.encode(), fields.pop(_MARKER, None))
        if signing.unseal(_SIGNED_BATCH, batch, marker) != _batch_hour(batch):
            tally(key, "has no valid marker for its batch id; not applied")
            return None
    counters: dict[tuple[str, str], int] = {}
    for field, value in fields.items():
        parsed = _counter(field, value)
        if parsed is None:
            tally(key, "holds a field that is not a counter track writes; left out")
        else:
            counters[parsed[0]] = parsed[1]
    limit = int(hotcache_settings.ANALYTICS_MAX_COUNTERS_PER_HOUR) + _OVERFLOW_SLACK + 1
    if len(counters) > limit:
        tally(key, f"holds {len(counters)} counters, more than the cap allows; the rest go to (other)")
        everything = (OVERFLOW, OVERFLOW)
        kept = sorted(k for k in counters if k != everything)[: limit - 1]
        rest = sum(n for k, n in counters.items() if k not in kept)
        counters = {k: counters[k] for k in kept} | {everything: rest}
    return counters


# --- report --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnalyticsReport:
    hourly: list[tuple[dt.datetime, int]]  # UTC hour start, total count
    daily: list[tuple[dt.date, int]]
    top_events: list[tuple[str, int]]  # descending, at most 20
    top_paths: list[tuple[str, int]]  # descending, at most 20
    visitors: list[tuple[str, dt.date, int]]  # event, day, distinct visitors
    unsynced: int  # counts still only in Redis (included in the totals above)


_TOP = 20


def _as_utc(value: dt.datetime | dt.date) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)


def report(start: dt.datetime | dt.date, end: dt.datetime | dt.date, event: str | None = None) -> AnalyticsReport:
    """Counts for hours in [start, end): MongoDB (4 queries) plus unsynced Redis counters (3 round trips).

    A batch the sync has written but not yet released can be counted twice for that moment.
    """
    lo, hi = _as_utc(start), _as_utc(end)
    if event is not None:
        event = validate_event(event)
    match: dict[str, Any] = {"hour": {"$gte": lo, "$lt": hi}}
    if event is not None:
        match["event"] = event
    coll = _hourly_collection()
    hourly: dict[dt.datetime, int] = {}
    by_event: dict[str, int] = {}
    by_path: dict[str, int] = {}
    visitors: dict[tuple[str, str], int] = {}
    unsynced = 0
    try:
        for row in coll.aggregate([{"$match": match}, {"$group": {"_id": "$hour", "n": {"$sum": "$count"}}}]):
            hourly[_as_utc(row["_id"])] = int(row["n"])
        for name, target in (("event", by_event), ("path", by_path)):
            rows = coll.aggregate(
                [
                    {"$match": match},
                    {"$group": {"_id": f"${name}", "n": {"$sum": "$count"}}},
                    {"$sort": {"n": -1}},
                    {"$limit": 5 * _TOP},  # headroom for Redis-only counts to move an entry into the top 20
                ]
            )
            target.update({str(r["_id"]): int(r["n"]) for r in rows})
        vmatch: dict[str, Any] = {"day": {"$gte": _as_utc(lo.date()), "$lt": hi}}
        if event is not None:
            vmatch["event"] = event
        for doc in _visitors_collection().find(vmatch):
            visitors[(_as_utc(doc["day"]).strftime(_DAY_FMT), doc["event"])] = int(doc["count"])
    except BackendUnavailable as exc:
        log.warning("hotcache analytics: report without MongoDB figures: %s", exc)
    try:
        unsynced = _add_redis(lo, hi, event, hourly, by_event, by_path, visitors)
    except RedisUnavailable as exc:
        log.warning("hotcache analytics: report without unsynced Redis counters: %s", exc)
    daily: dict[dt.date, int] = {}
    for hour, n in hourly.items():
        daily[hour.date()] = daily.get(hour.date(), 0) + n

    def top(d: dict[str, int]) -> list[tuple[str, int]]:
        return sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))[:_TOP]

    return AnalyticsReport(
        hourly=sorted(hourly.items()),
        daily=sorted(daily.items()),
        top_events=top(by_event),
        top_paths=top(by_path),
        visitors=sorted((e, _label_to_day(d).date(), n) for (d, e), n in visitors.items()),
        unsynced=unsynced,
    )


def _add_redis(
    lo: dt.datetime,
    hi: dt.datetime,
    event: str | None,
    hourly: dict[dt.datetime, int],
    by_event: dict[str, int],
    by_path: dict[str, int],
    visitors: dict[tuple[str, str], int],
) -> int:
    idx = _index_keys()
    tally = _Tally()
    raw_hours, raw_pending, raw_days = _read_many(
        lambda pipe: [
            pipe.zrangebyscore(idx.hours, lo.timestamp(), f"({hi.timestamp()}"),
            pipe.smembers(idx.pending),
            pipe.zrangebyscore(idx.days, _as_utc(lo.date()).timestamp(), f"({hi.timestamp()}"),
        ]
    )
    hours = _valid_members(idx.hours, raw_hours, _is_hour, tally)[0]
    pending = [
        b
        for b in _valid_members(idx.pending, raw_pending, _is_batch, tally)[0]
        if lo <= _label_to_hour(_batch_hour(b)) < hi
    ]
    days = _valid_members(idx.days, raw_days, _is_day, tally)[0]

    rows = _read_counters(hours, pending)
    unsynced = 0
    sources = [*((h, _hour_key(h), None) for h in hours), *((_batch_hour(b), _pending_key(b), b) for b in pending)]
    for (label, key, batch), raw in zip(sources, rows, strict=True):
        hour = _label_to_hour(label)
        for (ev, path), n in (_counters(key, raw, tally, batch=batch) or {}).items():
            if event is not None and ev != event:
                continue
            unsynced += n
            hourly[hour] = hourly.get(hour, 0) + n
            by_event[ev] = by_event.get(ev, 0) + n
            by_path[path] = by_path.get(path, 0) + n
    for (d, e), n in _day_counts(days, tally).items():
        if event is None or e == event:
            visitors[(d, e)] = max(n, visitors.get((d, e), 0))
    return unsynced


# --- HTTP endpoint -------------------------------------------------------------------------------


_BEACON_TYPES = ("application/json", "text/plain", "")  # sendBeacon sends a string as text/plain, a bare Blob untyped


def _bad(field: str, message: str, status: int = 400) -> JsonResponse:
    metering.event(FEATURE, "rejected")
    return JsonResponse({"error": message, "field": field}, status=status)


def _request_user_id(request: HttpRequest) -> object:
    """The signed-in user's pk if track() takes it as a user_id, else None (the visitor id counts instead)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    try:
        return _check_user_id(user.pk)
    except InvalidName:
        return None


@csrf_exempt
def track_view(request: HttpRequest) -> HttpResponse:
    """POST /hotcache/analytics/track with JSON {"event", "path", "visitor_id"}: 204, or 4xx naming the field.

    CSRF-exempt on purpose: browsers send it with navigator.sendBeacon (no CSRF header, often no cookie),
    it changes no user's state and carries no credentials, and a forged request can only add a counter,
    which anyone could do by calling it directly. Limit it with the rate-limit feature: target the URL
    name ``hotcache:analytics-track`` in RATELIMIT_RULES.
    """
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    kind = request.content_type or ""
    if kind not in _BEACON_TYPES and not (kind.startswith("application/") and kind.endswith("+json")):
        return _bad("content_type", "Content-Type must be application/json or text/plain", status=415)
    cap = int(hotcache_settings.ANALYTICS_TRACK_MAX_BODY)
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = -1
    if declared < 0:
        return _bad("body", "Content-Length is not a number of bytes")
    if declared > cap:
        return _bad("body", f"body is larger than {cap} bytes")
    body = request.read(cap + 1)  # never more than the cap is read, whatever the header said
    if len(body) > cap:
        return _bad("body", f"body is larger than {cap} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return _bad("body", "body is not valid JSON")
    if not isinstance(data, dict):
        return _bad("body", "body must be a JSON object")
    # Each field goes through the same boundary as track()'s argument, once; the first bad one is named.
    event = data.get("event")
    if event is None:
        return _bad("event", "event is required")
    if not isinstance(event, str):
        return _bad("event", "event must be a string")
    try:
        validate_event(event)
    except InvalidName:
        return _bad("event", f"event must match {EVENT_PATTERN}")
    try:
        path = normalize_path(data.get("path"))
    except InvalidName as exc:
        return _bad("path", str(exc))
    try:
        visitor_id = _check_visitor_id(data.get("visitor_id"))
    except InvalidName as exc:
        return _bad("visitor_id", str(exc))
    _track(_Event(event, path, _visitor_digest(_request_user_id(request), visitor_id), 1))
    return HttpResponse(status=204)


# --- middleware ----------------------------------------------------------------------------------


def _matches(path: str, prefixes: Iterable[str]) -> bool:
    return any(path.startswith(p) for p in prefixes)


def _page_view(request: HttpRequest) -> None:
    """Track ``page_view`` for ``request``. Django decodes %XX in path_info (``%0A`` is a newline there), so
    the path is re-escaped as the client sent it; the anonymous visitor is a digest of IP and User-Agent."""
    session = getattr(request, "session", None)
    visitor = getattr(session, "session_key", None)
    if not visitor:
        raw = f"{request.META.get('REMOTE_ADDR', '')}|{request.META.get('HTTP_USER_AGENT', '')}"
        visitor = "a:" + hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
    try:
        path = escape_uri_path(request.path_info)[:MAX_RAW_PATH_LENGTH]
        track("page_view", path=path, user_id=_request_user_id(request), visitor_id=visitor)
    except ValueError as exc:  # InvalidName, or a path_info no server should hand over (a lone surrogate)
        # A page that answered 2xx is never turned into an error by its page view.
        metering.event(FEATURE, "rejected")
        log.info("hotcache analytics: page view not tracked: %s", exc)


class AnalyticsMiddleware:
    """Tracks ``page_view`` for successful GET responses on paths in ANALYTICS_MIDDLEWARE_INCLUDE and not in
    ANALYTICS_MIDDLEWARE_EXCLUDE (prefixes). Visitor: the user, else the session, else a digest of IP and
    User-Agent (never stored raw). One Redis round trip per tracked page view; nothing for the rest.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.method == "GET" and 200 <= response.status_code < 300:
            path = request.path_info
            if _matches(path, hotcache_settings.ANALYTICS_MIDDLEWARE_INCLUDE) and not _matches(
                path, hotcache_settings.ANALYTICS_MIDDLEWARE_EXCLUDE
            ):
                _page_view(request)
        return response


# Included by hotcache.urls under "analytics/": POST /hotcache/analytics/track.
urlpatterns = [_route("track", track_view, name="analytics-track")]
