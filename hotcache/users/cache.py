"""The users' Redis cache: one read (entry + version), a write-back guarded by the version, invalidations.

Invalidation bumps the user's version and deletes the entry in one script (user_invalidate.lua); a fill
writes back only if the version is still the one read before loading (user_fill.lua). Invalidations
that could not reach Redis are a hotcache.recovery.Deferred, replayed before this process's next read.
See docs/users.md ("How it works", "Failure behaviour").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from django.db import models

from hotcache import metering, recovery, signing
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import RedisUnavailable
from hotcache.users.entries import (
    FEATURE,
    SKEW_MS,
    Cached,
    Codec,
    UserId,
    decode,
    encode,
    entry_key,
    user_id,
    version_key,
)

__all__ = ["fill", "invalidate", "log", "lookup", "pending_invalidations", "read"]

log = logging.getLogger("hotcache.users")

_VERSION_TTL = 86400  # the version counter outlives any entry (USER_CACHE_TTL) and any in-flight load
_FILL = redis_backend.Script("user_fill")
_INVALIDATE = redis_backend.Script("user_invalidate")
_REPLAY_BATCH = 500  # invalidations per pipeline when replaying (one round trip each)

# Invalidations (user id key parts) this process could not send, replayed before its next read.
# Bounded, so an outage cannot grow it without limit: one older than USER_CACHE_TTL is moot (every
# entry it could remove has expired), and beyond max_items the oldest are dropped (a stale entry
# then lives USER_CACHE_TTL at most).
pending_invalidations: recovery.Deferred[str] = recovery.Deferred(max_items=10_000)


def read(uid: str) -> tuple[bytes | None, bytes | None]:
    """(entry, version) in one command; first replays invalidations that missed an outage, if any."""
    pending = pending_invalidations.snapshot(_moot_after()) if pending_invalidations else set()
    reset: list[str] = []

    def op(r: Any) -> Any:
        if pending:
            reset.extend(_invalidate(r, list(pending)))
        return r.mget([entry_key(uid), version_key(uid)])

    entry, version = redis_backend.lean_call(FEATURE, op)
    if pending:
        pending_invalidations.done(pending)
        _counters_reset(reset)
    return entry, version


def fill(uid: str, version: bytes | None, user: Any, loader: Codec) -> bool:
    """Write ``user`` back if the version is still ``version`` (what read() saw); True when stored."""
    # The version goes back byte for byte: whatever Redis held is compared, never decoded.
    seen = version if version is not None else b""
    ttl = int(hotcache_settings.USER_CACHE_TTL)
    payload = encode(uid, user, loader, ttl)
    try:
        stored, replaced = redis_backend.call(
            FEATURE,
            lambda r: _FILL(r, [entry_key(uid), version_key(uid)], [seen, payload, ttl, _VERSION_TTL]),
        )
    except RedisUnavailable:
        return False
    if replaced:  # the script found a key of the wrong type (only a write from outside hotcache makes one)
        which, _, kind = _text(replaced).partition(":")
        key = entry_key(uid) if which == "entry" else version_key(uid)
        signing.tampered(FEATURE, key, f"was a Redis {kind}, not a string; replaced")
    return bool(stored)


def lookup(uid: UserId, loader: Codec, prefetched: Any = None) -> tuple[Cached | None, Callable[[Any], bool] | None]:
    """(cached, fill) where fill(user) writes a freshly loaded user back, or is None when Redis is unavailable.

    ``prefetched``: the user's entry and version already read with the session (``.uid``, ``.entry``,
    ``.version``; hotcache.sessions.cache.UserRead); used when it is this user's and no invalidation is owed,
    else the user is read here. Its values are checked exactly as a read's.
    """
    if prefetched is not None and prefetched.uid == uid.key and not pending_invalidations:
        raw, version = prefetched.entry, prefetched.version
    else:
        try:
            raw, version = read(uid.key)
        except RedisUnavailable:
            metering.event(FEATURE, "fallback")
            return None, None
    cached = decode(uid.key, raw, loader) if raw is not None else None
    if cached is not None:
        metering.event(FEATURE, "hit")
        return cached, None
    metering.event(FEATURE, "miss")
    return None, partial(fill, uid.key, version, loader=loader)


def invalidate(user_ids: Iterable[Any], model: type[models.Model]) -> int:
    """Bump the version and drop the entry of each user; how many reached Redis now (the rest are deferred).

    Raises InvalidName, before touching Redis, if any id cannot be a primary key of ``model``.
    """
    ids = sorted({user_id(u, model).key for u in user_ids})
    if not ids:
        return 0
    try:
        reset = redis_backend.call(FEATURE, lambda r: _invalidate(r, ids))
    except RedisUnavailable:
        log.warning(
            "hotcache: could not invalidate %d cached user(s) (%s) now; retrying on the next Redis call",
            len(ids),
            ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else ""),
        )
        _defer(ids)
        return 0
    _counters_reset(reset)
    metering.event(FEATURE, "invalidated", len(ids))
    return len(ids)


def _invalidate(r: Any, ids: list[str]) -> list[str]:
    """Invalidate each user; returns the users whose version counter was not one (reset by the script).

    One script per user, so each touches one hash slot (Redis Cluster); several users go in pipelines of
    _REPLAY_BATCH, after the first one's script made sure the server knows the script (EVAL on NOSCRIPT). On a
    cluster that is one master of several: a batch's NOSCRIPT replies (not run) load the script on every master
    and are sent again, once (a promoted replica, or a master no script of this feature reached yet).
    """
    if not ids:
        return []
    resets = [int(_INVALIDATE(r, [entry_key(ids[0]), version_key(ids[0])], [_VERSION_TTL]))]
    for start in range(1, len(ids), _REPLAY_BATCH):
        # Each script sent once (on Redis Cluster redis-py's pipeline would re-send a batch whose reply timed out).
        calls = [
            (_INVALIDATE, [entry_key(uid), version_key(uid)], [_VERSION_TTL])
            for uid in ids[start : start + _REPLAY_BATCH]
        ]
        resets += [int(n) for n in redis_backend.run_scripts(r, calls)]
    return [uid for uid, reset in zip(ids, resets, strict=True) if reset]


def _defer(ids: list[str]) -> None:
    """Keep invalidations that could not reach Redis for replay (bounded: see pending_invalidations)."""
    dropped = pending_invalidations.update(ids)
    if dropped > 0:
        metering.event(FEATURE, "pending_dropped", dropped)
        log.warning(
            "hotcache: %d invalidations kept for replay were dropped (over %d)",
            dropped,
            pending_invalidations.max_items,
        )


def _moot_after() -> float:
    """Seconds after which a kept invalidation is moot: every entry it could remove has expired."""
    return float(hotcache_settings.USER_CACHE_TTL) + SKEW_MS / 1000


def _counters_reset(ids: Iterable[str]) -> None:
    for uid in ids:
        signing.tampered(FEATURE, version_key(uid), "was not a version counter; reset")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
