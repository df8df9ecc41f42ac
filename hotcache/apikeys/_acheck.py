"""check() for async code (require_api_key on an async view under ASGI): the warm check on the event loop, no hop.

The warm path is one call of the check script awaited on the loop (hotcache.backends.aredis: the same gate,
metering, timeouts and lost-reply answer as the sync client), with the keys and arguments of _hot.script_call
and its reply answered by _hot.decided(), the function check() answers its own replies with: the same results,
counts and events. Everything else is check()'s own code, run in a worker thread in ONE hop, so no logic is
written twice: a process that owes Redis a settlement or a replay (check_parsed), a reply that needs more than
itself (a miss and the MongoDB load, a repair, today's first use to index: _hot.resume with that reply), and an
outage or a lost reply (_hot.after_failure). Where the async path cannot serve (a Redis Cluster, fakeredis,
asgiref's throwaway loops under WSGI) the whole check runs there. See docs/apikeys.md ("Async views").

Writers and lost replies. The exactly-once protocol allows one check in flight per writer, and a writer settles
its doubt before it sends again (apikey_check.lua refuses a sequence number not above the writer's last as
stale; apikey_resolve.lua settles a lost one idempotently and records its number). Coroutines share the loop's
thread, so each loop keeps a pool of writers (``<thread writer>:k<n>``): a check takes a free one for its whole
call, hop included, and gives it back. A lost reply is handed to after_failure with that writer and sequence
number, exactly as check() hands its own: decided on MongoDB, counted nowhere, registered as the writer's doubt
before the writer goes back to the pool. A later check that takes the writer finds _recovery.owed() true and
runs check_parsed, which settles every doubt (apikey_resolve.lua: counted once, or taken back) before any
script of its own is sent. So the writer never sends while its doubt is open, the script's sequence rules hold
as on the sync path, and a lost check is counted exactly once. A task cancelled mid-call (the client went
away) registers nothing: its script ran once or not at all, and Redis's count is the truth; its writer is not
given back (a cancelled hop's worker thread may still be sending under it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import weakref

from hotcache import clock, recovery
from hotcache.apikeys import _recovery
from hotcache.apikeys._hot import _CHECK, Call, after_failure, check_parsed, decided, reply_of, resume, script_call
from hotcache.apikeys._records import parse, tag_of
from hotcache.apikeys._results import FEATURE, Usage
from hotcache.backends import aredis
from hotcache.exceptions import RedisUnavailable

__all__ = ["acheck"]

_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[str]] = weakref.WeakKeyDictionary()
os.register_at_fork(after_in_child=_pools.clear)  # a forked child's writers are new ones (recovery.writer())
_numbers = itertools.count(1)


async def acheck(raw_key: str) -> Usage:
    """check() awaited: the same Usage, InvalidKey and MongoUnavailable; warm, one round trip and no thread hop."""
    digest, prefix = parse(raw_key)  # a malformed key: InvalidKey, no store asked (as check())
    now = clock.utcnow()
    if aredis.client() is None:
        return await aredis.in_thread(check_parsed)(digest, prefix, now)
    pool = _pools.setdefault(asyncio.get_running_loop(), [])
    writer = pool.pop() if pool else f"{recovery.writer()}:k{next(_numbers)}"
    try:
        if _recovery.owed():  # a doubt (perhaps this writer's) or a replay first: check()'s own order
            usage = await aredis.in_thread(check_parsed)(digest, prefix, now)
        else:
            usage = await _warm(digest, prefix, now, Call(writer, _recovery.next_seq()))
    except asyncio.CancelledError:
        # Cancelled in a hop, the worker thread goes on sending under this writer: never lent again (a check
        # under it meanwhile would be a second in flight, its script refused as stale).
        raise
    except BaseException:
        pool.append(writer)
        raise
    pool.append(writer)
    return usage


async def _warm(digest: str, prefix: str, now: dt.datetime, call: Call) -> Usage:
    """One check script call on the loop; what its reply does not answer by itself goes on in a worker thread."""
    tag = tag_of(digest)
    keys, args = script_call(tag, now.date(), now, "", call.writer, call.seq, None)
    try:
        raw = await aredis.acall(FEATURE, lambda r: aredis.run_script(_CHECK, r, keys, args))
    except RedisUnavailable as exc:
        return await aredis.in_thread(after_failure)(exc, digest, prefix, now, call)
    reply = reply_of(raw)
    usage = decided(reply, digest, prefix, tag, now)
    if usage is not None:
        return usage
    return await aredis.in_thread(resume)(digest, prefix, now, call, reply)
