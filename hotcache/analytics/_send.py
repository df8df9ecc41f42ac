"""Sending a track script call exactly once: the lost-reply protocol of hotcache.recovery for a call whose
reply never came back (the writer's doubt, settled before the writer sends anything else). One event (track)
and a process's batch (ANALYTICS_BATCH_SECONDS) go through the same code. See docs/analytics.md ("Reply
lost") and docs/design/lost-replies.md.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass
from typing import Any

from hotcache import clock, metering, recovery, signing
from hotcache.analytics._events import FEATURE
from hotcache.analytics._write import TRACK, ScriptWrite
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import RedisUnavailable

__all__ = [
    "SIGNED_WRITER",
    "Doubt",
    "Sent",
    "confirmed",
    "doubts",
    "send",
    "sending",
    "sent_reply",
    "settle",
    "settle_args",
    "settle_own_doubt",
    "settled",
    "unsent",
]

log = logging.getLogger("hotcache.analytics")

SIGNED_WRITER = "analytics.writer"  # hotcache.signing purpose of a track call's token under its writer's key


@dataclass(slots=True)
class Doubt:
    """A track call whose script reached Redis but whose reply was lost: applied or not, unknown yet."""

    write: ScriptWrite
    token: str  # the call's sealed token
    at: float  # clock.time() of the call
    thread: threading.Thread
    previous: tuple[str, float] | None  # the writer's last token known applied, and when, at the time of the call

    @property
    def count(self) -> int:
        return self.write.events

    @property
    def event(self) -> str:
        return self.write.label


# Writers are hotcache.recovery.writer() (one per thread of this process) for track(), and one batch writer
# per process. Each call records its token under the writer's key; at most one doubt per writer, settled
# before the writer sends anything else. Tokens are sealed (hotcache.signing, identity = the writer), so no
# one without SECRET_KEY can write a token the script would take for one of ours; ``confirmed`` remembers
# each writer's last applied token, so the script can tell "not applied" (the key still holds that one) from
# "someone else wrote the key".
doubts: recovery.InDoubt[Doubt] = recovery.InDoubt()
confirmed: recovery.LastApplied[tuple[str, float]] = recovery.LastApplied()  # (sealed token, when)
_tokens = itertools.count(1)  # unique in this process; the nonce in the writer makes it unique overall


@dataclass(frozen=True, slots=True)
class Sent:
    """What a call did: "redis" (applied), "in_doubt" (reply lost), or "unavailable" (not sent or refused)."""

    outcome: str
    levels: int = 0  # counters that went to an overflow field
    visitor_overflow: int = 0


def settle(writer: str, doubt: Doubt) -> bool:
    """Settle ``writer``'s doubt in one script call; False if Redis still does not answer (the doubt stays).

    The script skips the doubt's counters if the writer's key holds its token (applied), applies them if it
    holds the writer's previous token (or nothing, where the key may have expired), and refuses otherwise:
    someone else wrote the key, so applied or not cannot be told and the events are not counted a second time.
    """
    args = settle_args(writer, doubt)
    if args is None:
        return True
    w = doubt.write
    try:
        reply = redis_backend.call(FEATURE, lambda r: TRACK(r, w.keys, args))
    except RedisUnavailable:
        return False  # a lost reply again changes nothing: same token, same question next time
    settled(writer, doubt, reply)
    return True


def settle_args(writer: str, doubt: Doubt) -> list[Any] | None:
    """The settling call's ARGV; None when the doubt expired instead (settled here: applied or not, unknown)."""
    retention = int(hotcache_settings.ANALYTICS_RETENTION_HOURS) * 3600
    if clock.time() - doubt.at >= retention:
        # The token's key has expired with the counters of that time: applied or not can no longer be told.
        doubts.settled(writer, doubt)
        metering.event(FEATURE, "in_doubt_expired", doubt.count)
        log.warning("hotcache analytics: %d %s event(s) in doubt for too long; not counted", doubt.count, doubt.event)
        return None
    previous, previous_at = doubt.previous or ("", 0.0)
    # Missing is normal with no previous token, or once the previous one may have expired (its TTL ran
    # from its own call; the doubt's token, had it been applied, would still be there).
    may_be_missing = not previous or clock.time() - previous_at >= retention - 60
    return doubt.write.args(doubt.token, resolving=True, previous=previous, may_be_missing=may_be_missing)


def settled(writer: str, doubt: Doubt, reply: Any) -> None:
    """What the settling call's reply says: applied, replayed, or refused (someone else wrote the key)."""
    w = doubt.write
    outcome, repaired, found = reply[2], reply[3], reply[4]
    if int(outcome) == 0 and len(reply) > 5:
        w.learn_marks(reply[5])
    refused = int(outcome) == 2
    # A writer key of the wrong type is reported once, as the refusal below.
    w.report_repairs(repaired, skip_writer=refused)
    doubts.settled(writer, doubt)
    if refused:
        why = "holds a token of this writer older than its last call (Redis lost writes?)"
        if not found:
            why = "is missing though this writer's last token cannot have expired"
        elif signing.unseal(SIGNED_WRITER, writer, found) is None:
            why = "holds a value hotcache never wrote"
        signing.tampered(FEATURE, w.keys[2], f"{why}; the call in doubt is not counted")
        metering.event(FEATURE, "in_doubt_refused", doubt.count)
        confirmed.forget(writer)
        return
    confirmed.set(writer, (doubt.token, doubt.at))
    metering.event(FEATURE, "tracked", doubt.count)
    metering.event(FEATURE, "in_doubt_applied" if int(outcome) == 1 else "in_doubt_replayed", doubt.count)


def settle_own_doubt(writer: str) -> bool:
    """Settle ``writer``'s doubt, if it has one; False while Redis does not answer (nothing may be sent)."""
    doubt = doubts.get(writer) if doubts else None
    return doubt is None or settle(writer, doubt)


def send(writer: str, w: ScriptWrite) -> Sent:
    """Send ``w`` as ``writer`` (whose doubt, if any, must be settled first). A lost reply makes it the writer's
    doubt: the caller must not count it elsewhere."""
    now, token = sending(writer)
    args = w.args(token)
    try:
        reply = redis_backend.call(FEATURE, lambda r: TRACK(r, w.keys, args))
    except RedisUnavailable as exc:
        return unsent(writer, w, token, now, exc)
    return sent_reply(writer, w, token, now, reply)


def sending(writer: str) -> tuple[float, str]:
    """(when, sealed token) of a call ``writer`` is about to send."""
    return clock.time(), signing.seal(SIGNED_WRITER, writer, str(next(_tokens)))


def unsent(writer: str, w: ScriptWrite, token: str, now: float, exc: RedisUnavailable) -> Sent:
    """A call that failed: the writer's doubt when its reply was lost after Redis got it, else unavailable."""
    if exc.maybe_applied:
        # The script reached Redis and only the reply was lost: it may have been counted. The buffer
        # would count it again, so it waits as the writer's doubt.
        doubts.add(writer, Doubt(w, token, now, threading.current_thread(), confirmed.get(writer)))
        metering.event(FEATURE, "in_doubt", w.events)
        log.warning("hotcache analytics: reply to a track call lost; %d %s event(s) in doubt", w.events, w.label)
        return Sent("in_doubt")
    return Sent("unavailable")


def sent_reply(writer: str, w: ScriptWrite, token: str, now: float, reply: Any) -> Sent:
    """A call Redis applied: the writer's confirmed token, and what its reply reports."""
    levels, visitor_overflow, repaired = reply[0], reply[1], reply[3]
    if len(reply) > 5:
        w.learn_marks(reply[5])
    confirmed.set(writer, (token, now))
    if repaired:
        w.report_repairs(repaired)
    metering.event(FEATURE, "tracked", w.events)
    if levels:
        metering.event(FEATURE, "overflow", int(levels))
    if visitor_overflow:
        metering.event(FEATURE, "visitor_overflow", int(visitor_overflow))
    return Sent("redis", int(levels), int(visitor_overflow))
