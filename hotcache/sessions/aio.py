"""The sessions' Redis reads for async code (``SessionStore.aload``): hotcache.sessions.cache's read, combined read
and fill, awaited on the event loop (hotcache.backends.aredis) with the same keys, scripts, checks and metering.

While invalidations are owed (after an outage) the sync read replays them first, in a worker thread: rare, and
it keeps one home for the replay. Where the async path cannot serve (a Redis Cluster, fakeredis), each call is
the sync one in a worker thread. See docs/design/async.md.
"""

from __future__ import annotations

from typing import Any

from hotcache import metering
from hotcache.backends import aredis
from hotcache.exceptions import RedisUnavailable
from hotcache.sessions import cache
from hotcache.sessions.entries import FEATURE, decode, encode, entry_key, version_key

__all__ = ["afill", "aread", "aread_with_user"]


async def aread(session_key: str) -> cache.Lookup | None:
    """cache.read() awaited: the entry and version in one MGET; None when Redis is unavailable."""
    if cache.pending_invalidations or aredis.client() is None:
        return await aredis.in_thread(cache.read)(session_key)
    keys = [entry_key(session_key), version_key(session_key)]
    try:
        raw, version = await aredis.acall(FEATURE, lambda r: r.mget(keys))
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        return None
    entry = decode(session_key, raw) if raw is not None else None
    metering.event(FEATURE, "hit" if entry is not None else "miss")
    return cache.Lookup(entry, version)


async def aread_with_user(session_key: str) -> tuple[cache.Lookup, cache.UserRead | None] | None:
    """combined.read_with_user() awaited: the session and its cached user in one round trip, as cache.read_with_user
    plans it (one MGET when this process knows the session's user, else session_user_read.lua); a Redis Cluster
    takes the sync path, whose reads go to each node."""
    if aredis.client() is None:  # a Redis Cluster among others: combined's read, one round trip per node
        from hotcache.sessions import combined

        return await aredis.in_thread(combined.read_with_user)(session_key)
    plan = cache._plan(session_key)

    async def op(r: aredis.Lean) -> Any:
        if plan.hinted:  # this process knows the session's user: one MGET of the four keys (1 billed)
            return cache._as_script_reply(plan, await r.mget(cache._mget_keys(session_key, plan)))
        return await aredis.run_script(cache._READ_WITH_USER, r, *cache._read_with_user_args(session_key))

    try:
        raw = await aredis.acall(FEATURE, op)
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        return None
    return cache._settle(session_key, raw)


async def afill(
    session_key: str, version: bytes | None, data: str, expiry_ms: int, user: str | None, ttl: int
) -> bool:
    """cache.fill() awaited: store a session read from the database after a miss, unless written since."""
    if aredis.client() is None:
        return await aredis.in_thread(cache.fill)(session_key, version, data, expiry_ms, user, ttl)
    if ttl <= 0:
        return False
    payload = encode(session_key, data, expiry_ms, user)
    seen = version if version is not None else b""
    keys = [entry_key(session_key), version_key(session_key)]
    try:
        stored: Any = await aredis.acall(
            FEATURE, lambda r: aredis.run_script(cache._FILL, r, keys, [seen, payload, ttl])
        )
    except RedisUnavailable as exc:
        if exc.maybe_applied:  # it may have stored a session a concurrent save has just replaced
            cache._owe(session_key)
        return False
    return bool(stored)
