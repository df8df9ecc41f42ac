"""track(): one Lua script per event while Redis answers (or one per interval and process with
ANALYTICS_BATCH_SECONDS), the outage buffer while it does not, and the lost-reply protocol (hotcache.analytics
._send) for a call whose reply never came back. See docs/analytics.md ("Reply lost", "Batching").
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import threading

from hotcache import clock, metering, recovery
from hotcache.analytics._batch import batch
from hotcache.analytics._events import (
    HOUR_FMT,
    Event,
    check_count,
    check_user_id,
    check_visitor_id,
    hour_start,
    normalize_path,
    validate_event,
    visitor_digest,
)
from hotcache.analytics._fallback import buffer
from hotcache.analytics._keys import bucket, bucket_writer
from hotcache.analytics._send import doubts, send, settle, settle_own_doubt
from hotcache.analytics._write import TRACK, build
from hotcache.conf import hotcache_settings

__all__ = ["TRACK", "doubts", "flush_batch", "track", "track_event"]

log = logging.getLogger("hotcache.analytics")


def track(
    event: str,
    *,
    path: str | None = None,
    user_id: object = None,
    visitor_id: str | None = None,
    count: int = 1,
) -> str:
    """Count ``count`` occurrences of ``event`` on ``path`` in the current UTC hour; add the visitor to the day's
    distinct visitors (``user_id`` wins over ``visitor_id``). Returns "redis", "fallback", "dropped",
    "in_doubt" (the reply was lost after Redis got the script: settled by this thread's next call), or
    "batched" (ANALYTICS_BATCH_SECONDS > 0: written with this process's next batch).

    Raises InvalidName for a bad event name, path, user_id or visitor_id (see normalize_path and
    docs/analytics.md), ValueError for a bad count; never for an outage.
    """
    event = validate_event(event)
    norm = normalize_path(path)
    visitor = visitor_digest(check_user_id(user_id), check_visitor_id(visitor_id))
    return track_event(Event(event, norm, visitor, check_count(count)))


def track_event(ev: Event) -> str:
    """track() for an event whose fields already passed the boundary (the endpoint checks each one to name it)."""
    now = clock.time()
    hour = dt.datetime.fromtimestamp(hour_start(now), tz=dt.UTC).strftime(HOUR_FMT)
    if float(hotcache_settings.ANALYTICS_BATCH_SECONDS) > 0:
        return batch.add(hour, ev)
    tag = bucket(ev.event)
    writer = bucket_writer(recovery.writer(), tag)
    if not settle_own_doubt(writer):
        # Redis still does not answer: this event takes the outage path; the doubt waits for the next call.
        return buffer.add((hour, ev.event, ev.path), ev.count)
    visitors = {(hour, ev.event): [ev.visitor]} if ev.visitor else None
    sent = send(writer, build(writer, {(hour, ev.event, ev.path): ev.count}, visitors, label=ev.event, tag=tag))
    if sent.outcome == "unavailable":
        return buffer.add((hour, ev.event, ev.path), ev.count)
    if sent.outcome == "redis" and buffer.has_data():
        # Leftovers of an outage reach MongoDB on the next due flush (the only MongoDB work after recovery).
        buffer.flush_if_due()
    return sent.outcome


def flush_batch() -> int:
    """Write this process's analytics batch now (ANALYTICS_BATCH_SECONDS > 0); the events written. Also called at
    exit and by the Celery and gunicorn hooks (docs/analytics.md, "Batching")."""
    return batch.flush()


def _at_exit() -> None:
    """Best effort at interpreter exit: write this process's batch, settle the doubts of this thread and of
    threads that have ended, then flush the outage buffer."""
    try:
        if batch.flush():
            metering.flush()  # the batch's own commands, whichever exit handler runs first
        if doubts:
            me = threading.current_thread()
            for writer, doubt in doubts.items():
                if (doubt.thread is me or not doubt.thread.is_alive()) and not settle(writer, doubt):
                    log.warning(
                        "hotcache analytics: exit with %d %s event(s) in doubt; not counted", doubt.count, doubt.event
                    )
        if buffer.has_data():
            buffer.flush()
    except Exception:
        log.warning("hotcache analytics: flush at exit failed", exc_info=True)


atexit.register(_at_exit)
