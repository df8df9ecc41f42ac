"""``request.auser()`` for async code: hotcache.users.session.get_user() with its Redis calls awaited on the event
loop (hotcache.backends.aredis). Every check is get_user()'s (backend configured, user_can_authenticate, the
session hash in constant time, SECRET_KEY_FALLBACKS); the session is read with ``aget`` (hotcache.sessions'
``aload``: the session and the cached user in one round trip). A warm request makes no thread hop; a miss loads
the user from its source of truth (the database) in a worker thread. See docs/design/async.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.contrib import auth
from django.contrib.auth.models import AnonymousUser

from hotcache import metering, signing
from hotcache.backends import aredis
from hotcache.conf import hotcache_settings
from hotcache.exceptions import RedisUnavailable
from hotcache.users import cache, entries
from hotcache.users.session import _MISS, _resolve, _take_prefetched, _unmatchable, _verdict

if TYPE_CHECKING:
    from django.http import HttpRequest

__all__ = ["afill", "aget_user", "alookup", "aread"]


async def aget_user(request: HttpRequest) -> Any:
    """session.get_user() awaited (same answer, same checks)."""
    session = request.session
    session_id = await session.aget(auth.SESSION_KEY, _MISS)
    backend_path = await session.aget(auth.BACKEND_SESSION_KEY, _MISS)
    resolved = _resolve(session_id, backend_path)
    if resolved is None:
        return AnonymousUser()
    user_id, loader, backend = resolved
    if not loader.handles(backend):
        if _unmatchable(session):
            await session.aflush()
            return AnonymousUser()
        return await auth.aget_user(request)
    can_authenticate = getattr(backend, "user_can_authenticate", lambda u: True)
    prefetched = _take_prefetched(session)
    cached, fill = await alookup(user_id, loader, prefetched)
    if cached is not None:
        if not can_authenticate(cached.user):
            return AnonymousUser()
        verified = await _averify(request, cached.user, cached.auth_hash, authoritative=False)
        if verified is not _MISS:
            return verified or AnonymousUser()
        fill = None
    user = await sync_to_async(loader.load)(user_id.value)  # a miss: the source of truth, as Django's aget_user
    if user is None:
        return AnonymousUser()
    if fill is not None:
        await fill(user)
    if not can_authenticate(user):
        return AnonymousUser()
    auth_hash = user.get_session_auth_hash() if hasattr(user, "get_session_auth_hash") else None
    return await _averify(request, user, auth_hash, authoritative=True) or AnonymousUser()


async def _averify(request: HttpRequest, user: Any, auth_hash: str | None, *, authoritative: bool) -> Any | None:
    """session._verify() awaited (the session's cycle and flush are its async twins)."""
    verdict = _verdict(request, user, auth_hash, authoritative=authoritative)
    if verdict == "fallback":
        await request.session.acycle_key()
        request.session[auth.HASH_SESSION_KEY] = auth_hash
    elif verdict == "flush":
        await request.session.aflush()
        return None
    return _MISS if verdict == "ask" else user


async def alookup(
    uid: entries.UserId, loader: entries.Codec, prefetched: Any = None
) -> tuple[entries.Cached | None, Callable[[Any], Awaitable[bool]] | None]:
    """cache.lookup() awaited: (cached, fill) where ``await fill(user)`` writes a loaded user back (None: Redis
    unavailable)."""
    if prefetched is not None and prefetched.uid == uid.key and not cache.pending_invalidations:
        raw, version = prefetched.entry, prefetched.version
    else:
        try:
            raw, version = await aread(uid.key)
        except RedisUnavailable:
            metering.event(entries.FEATURE, "fallback")
            return None, None
    cached = entries.decode(uid.key, raw, loader) if raw is not None else None
    if cached is not None:
        metering.event(entries.FEATURE, "hit")
        return cached, None
    metering.event(entries.FEATURE, "miss")

    async def fill(user: Any) -> bool:
        return await afill(uid.key, version, user, loader)

    return None, fill


async def aread(uid: str) -> tuple[bytes | None, bytes | None]:
    """cache.read() awaited: (entry, version) in one MGET. Owed invalidations are replayed by the sync read first."""
    if cache.pending_invalidations or aredis.client() is None:
        return await aredis.in_thread(cache.read)(uid)
    keys = [entries.entry_key(uid), entries.version_key(uid)]
    entry, version = await aredis.acall(entries.FEATURE, lambda r: r.mget(keys))
    return entry, version


async def afill(uid: str, version: bytes | None, user: Any, loader: entries.Codec) -> bool:
    """cache.fill() awaited: write ``user`` back if the version is still ``version``."""
    if aredis.client() is None:
        return await aredis.in_thread(cache.fill)(uid, version, user, loader)
    seen = version if version is not None else b""
    ttl = int(hotcache_settings.USER_CACHE_TTL)
    payload = entries.encode(uid, user, loader, ttl)
    keys = [entries.entry_key(uid), entries.version_key(uid)]
    try:
        stored, replaced = await aredis.acall(
            entries.FEATURE,
            lambda r: aredis.run_script(cache._FILL, r, keys, [seen, payload, ttl, cache._VERSION_TTL]),
        )
    except RedisUnavailable:
        return False
    if replaced:
        which, _, kind = cache._text(replaced).partition(":")
        key = entries.entry_key(uid) if which == "entry" else entries.version_key(uid)
        signing.tampered(entries.FEATURE, key, f"was a Redis {kind}, not a string; replaced")
    return bool(stored)
