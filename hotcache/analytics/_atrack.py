"""track_event() for async code (AnalyticsMiddleware under ASGI): the track script awaited on the event loop
(hotcache.backends.aredis), the same lost-reply protocol (hotcache.analytics._send's steps), no thread hop.

Writers: the protocol allows one call in flight per writer, settled before the writer sends again. Coroutines
share the loop's thread, so each loop keeps a pool of writers (``<thread writer>:a<n>``): a page view takes a
free one for its call and gives it back, and the next page view to take it settles its doubt first. The pool
grows to the loop's peak of concurrent page views.

Off the loop, in a worker thread (rare, never per event): a due batch write (ANALYTICS_BATCH_SECONDS: once per
interval), the outage buffer (it may write to MongoDB), and the whole event where the async path cannot serve
(a Redis Cluster, fakeredis). See docs/design/async.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import weakref

from hotcache import clock, recovery
from hotcache.analytics._batch import batch
from hotcache.analytics._events import FEATURE, HOUR_FMT, Event, hour_start
from hotcache.analytics._fallback import buffer
from hotcache.analytics._hot import track_event
from hotcache.analytics._keys import bucket, bucket_writer
from hotcache.analytics._send import (
    Sent,
    doubts,
    sending,
    sent_reply,
    settle_args,
    settled,
    unsent,
)
from hotcache.analytics._write import TRACK, ScriptWrite, build
from hotcache.backends import aredis
from hotcache.conf import hotcache_settings
from hotcache.exceptions import RedisUnavailable

__all__ = ["atrack_event"]

_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[str]] = weakref.WeakKeyDictionary()
os.register_at_fork(after_in_child=_pools.clear)  # a forked child's writers are new ones (recovery.writer())
_numbers = itertools.count(1)
_background: set[asyncio.Future[int]] = set()


async def atrack_event(ev: Event) -> str:
    """track_event() awaited: same outcomes ("redis", "fallback", "dropped", "in_doubt", "batched")."""
    if aredis.client() is None:
        return await aredis.in_thread(track_event)(ev)
    now = clock.time()
    hour = dt.datetime.fromtimestamp(hour_start(now), tz=dt.UTC).strftime(HOUR_FMT)
    if float(hotcache_settings.ANALYTICS_BATCH_SECONDS) > 0:
        if batch.add_only(hour, ev) and not _background:
            future = asyncio.get_running_loop().run_in_executor(None, batch.flush)
            _background.add(future)
            future.add_done_callback(_background.discard)
        return "batched"
    pool = _pools.setdefault(asyncio.get_running_loop(), [])
    base = pool.pop() if pool else f"{recovery.writer()}:a{next(_numbers)}"
    tag = bucket(ev.event)
    writer = bucket_writer(base, tag)  # as the sync path: one token key and one doubt per writer and bucket
    try:
        if not await _settle_own_doubt(writer):
            return await _to_buffer(hour, ev)
        visitors = {(hour, ev.event): [ev.visitor]} if ev.visitor else None
        counters = {(hour, ev.event, ev.path): ev.count}
        sent = await _send(writer, build(writer, counters, visitors, label=ev.event, tag=tag))
    finally:
        pool.append(base)
    if sent.outcome == "unavailable":
        return await _to_buffer(hour, ev)
    if sent.outcome == "redis" and buffer.has_data():
        await aredis.in_thread(buffer.flush_if_due)()  # leftovers of an outage
    return sent.outcome


async def _to_buffer(hour: str, ev: Event) -> str:
    """The outage path: the buffer, off the loop (adding may flush it to MongoDB)."""
    return await aredis.in_thread(buffer.add)((hour, ev.event, ev.path), ev.count)


async def _settle_own_doubt(writer: str) -> bool:
    """_send.settle_own_doubt() awaited."""
    doubt = doubts.get(writer) if doubts else None
    if doubt is None:
        return True
    args = settle_args(writer, doubt)
    if args is None:
        return True
    w = doubt.write
    try:
        reply = await aredis.acall(FEATURE, lambda r: aredis.run_script(TRACK, r, w.keys, args))
    except RedisUnavailable:
        return False
    settled(writer, doubt, reply)
    return True


async def _send(writer: str, w: ScriptWrite) -> Sent:
    """_send.send() awaited."""
    now, token = sending(writer)
    args = w.args(token)
    try:
        reply = await aredis.acall(FEATURE, lambda r: aredis.run_script(TRACK, r, w.keys, args))
    except RedisUnavailable as exc:
        return unsent(writer, w, token, now, exc)
    return sent_reply(writer, w, token, now, reply)
