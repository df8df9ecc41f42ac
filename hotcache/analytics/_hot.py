"""track(): one Lua script per event while Redis answers, the outage buffer while it does not, and the
lost-reply protocol of hotcache.recovery for a call whose reply never came back (the thread's doubt, settled
by its next call). See docs/analytics.md ("Reply lost") and docs/design/lost-replies.md.
"""

from __future__ import annotations

import atexit
import datetime as dt
import itertools
import logging
import threading
from dataclasses import dataclass
from typing import Any

from hotcache import clock, metering, recovery, signing
from hotcache.analytics._events import (
    DAY_FMT,
    FEATURE,
    HOUR_FMT,
    OVERFLOW,
    OVERFLOW_SLACK,
    Event,
    check_count,
    check_user_id,
    check_visitor_id,
    field,
    hour_start,
    normalize_path,
    validate_event,
    visitor_digest,
)
from hotcache.analytics._fallback import buffer
from hotcache.analytics._keys import day_events_key, hll_key, hour_key, key, writer_key
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import RedisUnavailable

__all__ = ["SIGNED_WRITER", "TRACK", "Doubt", "confirmed", "doubts", "track", "track_event"]

log = logging.getLogger("hotcache.analytics")

TRACK = redis_backend.Script("analytics_track")
SIGNED_WRITER = "analytics.writer"  # hotcache.signing purpose of a track call's token under its writer's key
_TRACK_ARGS = 14  # ARGV 1-14: the counters; then token, mode, previous token, may-be-missing


@dataclass(slots=True)
class Doubt:
    """A track call whose script reached Redis but whose reply was lost: applied or not, unknown yet."""

    keys: list[str]
    args: list[Any]  # the call's arguments (ARGV), its sealed token included
    count: int
    event: str
    at: float  # clock.time() of the call
    thread: threading.Thread
    previous: tuple[str, float] | None  # the writer's last token known applied, and when, at the time of the call


# Writers are hotcache.recovery.writer(): one per thread of this process. Each track script records its
# token under the writer's key; at most one doubt per writer. Only the writer's own thread (or, at exit,
# the exiting thread for dead threads) settles it, before the writer sends anything else. Tokens are sealed
# (hotcache.signing, identity = the writer), so no one without SECRET_KEY can write a token the script would
# take for one of ours; ``confirmed`` remembers each writer's last applied token, so the script can tell
# "not applied" (the key still holds that one) from "someone else wrote the key".
doubts: recovery.InDoubt[Doubt] = recovery.InDoubt()
confirmed: recovery.LastApplied[tuple[str, float]] = recovery.LastApplied()  # (sealed token, when)
_tokens = itertools.count(1)  # unique in this process; the nonce in the writer makes it unique overall

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


def _settle(writer: str, doubt: Doubt) -> bool:
    """Settle ``writer``'s doubt in one script call; False if Redis still does not answer (the doubt stays).

    The script skips the doubt's counters if the writer's key holds its token (applied), applies them if it
    holds the writer's previous token (or nothing, where the key may have expired), and refuses otherwise:
    someone else wrote the key, so applied or not cannot be told and the event is not counted a second time.
    """
    retention = int(hotcache_settings.ANALYTICS_RETENTION_HOURS) * 3600
    if clock.time() - doubt.at >= retention:
        # The token's key has expired with the counters of that time: applied or not can no longer be told.
        doubts.settled(writer, doubt)
        metering.event(FEATURE, "in_doubt_expired", doubt.count)
        log.warning("hotcache analytics: %d %s event(s) in doubt for too long; not counted", doubt.count, doubt.event)
        return True
    previous, previous_at = doubt.previous or ("", 0.0)
    # Missing is normal with no previous token, or once the previous one may have expired (its TTL ran
    # from its own call; the doubt's token, had it been applied, would still be there).
    may_be_missing = not previous or clock.time() - previous_at >= retention - 60
    args = [*doubt.args[:_TRACK_ARGS], doubt.args[_TRACK_ARGS], "1", previous, "1" if may_be_missing else "0"]
    try:
        reply = redis_backend.call(FEATURE, lambda r: TRACK(r, doubt.keys, args))
    except RedisUnavailable:
        return False  # a lost reply again changes nothing: same token, same question next time
    _, _, outcome, repaired, found = reply
    refused = int(outcome) == 2
    # A writer key of the wrong type is reported once, as the refusal below.
    _report_repairs(doubt.keys, int(repaired) & ~64 if refused else int(repaired))
    doubts.settled(writer, doubt)
    if refused:
        why = "holds a token of this writer older than its last call (Redis lost writes?)"
        if not found:
            why = "is missing though this writer's last token cannot have expired"
        elif signing.unseal(SIGNED_WRITER, writer, found) is None:
            why = "holds a value hotcache never wrote"
        signing.tampered(FEATURE, doubt.keys[6], f"{why}; the call in doubt is not counted")
        metering.event(FEATURE, "in_doubt_refused", doubt.count)
        confirmed.forget(writer)
        return True
    confirmed.set(writer, (doubt.args[_TRACK_ARGS], doubt.at))
    metering.event(FEATURE, "tracked", doubt.count)
    metering.event(FEATURE, "in_doubt_applied" if int(outcome) == 1 else "in_doubt_replayed", doubt.count)
    return True


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

    Raises InvalidName for a bad event name, path, user_id or visitor_id (see normalize_path and
    docs/analytics.md), ValueError for a bad count; never for an outage.
    """
    event = validate_event(event)
    norm = normalize_path(path)
    visitor = visitor_digest(check_user_id(user_id), check_visitor_id(visitor_id))
    return track_event(Event(event, norm, visitor, check_count(count)))


def track_event(ev: Event) -> str:
    """track() for an event whose fields already passed the boundary (the endpoint checks each one to name it)."""
    event, norm, count = ev.event, ev.path, ev.count
    now = clock.time()
    start = hour_start(now)
    day_start = int(now // 86400 * 86400)
    when = dt.datetime.fromtimestamp(start, tz=dt.UTC)
    hour, day = when.strftime(HOUR_FMT), when.strftime(DAY_FMT)
    script_keys = [
        hour_key(hour),
        key("hours"),  # as index_keys() builds it, without the other three
        hll_key(day, event),
        hll_key(day, OVERFLOW),
        day_events_key(day),
        key("days"),
    ]
    args = [
        field(event, norm),
        field(event, OVERFLOW),
        field(OVERFLOW, OVERFLOW),
        count,
        int(hotcache_settings.ANALYTICS_MAX_COUNTERS_PER_HOUR),
        OVERFLOW_SLACK,
        int(hotcache_settings.ANALYTICS_RETENTION_HOURS) * 3600,
        hour,
        start,
        ev.visitor,
        event,
        int(hotcache_settings.ANALYTICS_MAX_EVENTS_PER_DAY),
        day,
        day_start,
    ]
    writer = recovery.writer()
    doubt = doubts.get(writer) if doubts else None
    if doubt is not None and not _settle(writer, doubt):
        # Redis still does not answer: this event takes the outage path; the doubt waits for the next call.
        return buffer.add((hour, event, norm), count)
    script_keys.append(writer_key(writer))
    token = signing.seal(SIGNED_WRITER, writer, str(next(_tokens)))
    args += [token, "0", "", "0"]
    try:
        level, visitor_overflow, _, repaired, _ = redis_backend.call(FEATURE, lambda r: TRACK(r, script_keys, args))
    except RedisUnavailable as exc:
        if exc.maybe_applied:
            # The script reached Redis and only the reply was lost: it may have been counted. The buffer
            # would count it again, so it waits as this thread's doubt.
            previous = confirmed.get(writer)
            doubts.add(writer, Doubt(script_keys, args, count, event, now, threading.current_thread(), previous))
            metering.event(FEATURE, "in_doubt", count)
            log.warning("hotcache analytics: reply to a track call lost; %d %s event(s) in doubt", count, event)
            return "in_doubt"
        return buffer.add((hour, event, norm), count)
    confirmed.set(writer, (token, now))
    if repaired:
        _report_repairs(script_keys, repaired)
    metering.event(FEATURE, "tracked", count)
    if level:
        metering.event(FEATURE, "overflow")
    if visitor_overflow:
        metering.event(FEATURE, "visitor_overflow")
    if buffer.has_data():
        # Leftovers of an outage reach MongoDB on the next due flush (the only MongoDB work after recovery).
        buffer.flush_if_due()
    return "redis"


def _at_exit() -> None:
    """Best effort at interpreter exit: settle the doubts of this thread and of threads that have ended, then
    flush the outage buffer."""
    try:
        if doubts:
            me = threading.current_thread()
            for writer, doubt in doubts.items():
                if (doubt.thread is me or not doubt.thread.is_alive()) and not _settle(writer, doubt):
                    log.warning(
                        "hotcache analytics: exit with %d %s event(s) in doubt; not counted", doubt.count, doubt.event
                    )
        if buffer.has_data():
            buffer.flush()
    except Exception:
        log.warning("hotcache analytics: fallback flush at exit failed", exc_info=True)


atexit.register(_at_exit)
