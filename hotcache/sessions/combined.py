"""The session and its cached user read together, and with the rate-limit decision: one round trip per request.

No middleware of its own: combining happens when hotcache's pieces meet on a request (docs/sessions.md, "One
round trip per request"). With ``SESSION_ENGINE = "hotcache.sessions"`` and hotcache.users'
``CachedAuthenticationMiddleware`` on the request (it sets ``hotcache_user_wanted`` on the session), a session
read also reads the user its entry names
(session_user_read.lua); with ``RateLimitMiddleware`` too, that read rides in the rate-limit decision's pipeline
(``companion_for``). Each part keeps its own checks, gate and fallbacks; only the round trips are shared.

On Redis Cluster the script cannot run: its user keys (``{users:<u>}``) are derived inside it and hash to another
slot than the session's (``{sessions:<key>}``; no key layout can share one: the session key is made at login,
before the user is known). There the session's MGET and the user's MGET are sent together, each to its node, one
round trip per node in parallel (``hotcache.backends.cluster.send_once``, beside the rate-limit groups when it
rides with them). The user to read is the one this process last saw the session name (``_Hints``, bounded); on the
session's first read in a process the user is read on its own afterwards, as without combining. The session's
verified entry decides, as on one server: a user read for another id is never used.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from django.http import HttpRequest
from redis.exceptions import RedisError

from hotcache import metering
from hotcache.backends import cluster
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import RedisUnavailable
from hotcache.sessions import cache
from hotcache.sessions.entries import FEATURE, entry_key, valid_key, version_key

__all__ = ["Companion", "companion_for", "read_with_user", "wanted"]


def wanted(session: Any) -> bool:
    """Whether ``session``'s read should bring its user: hotcache.users' middleware asked for it on this request
    (``session.hotcache_user_wanted``) and the feature is enabled."""
    return bool(getattr(session, "hotcache_user_wanted", False)) and hotcache_settings.enabled("users")


class _Hints:
    """Which user each session named when this process last read it (a Redis Cluster's combined read sends the
    user's read with the session's on that guess; the session's verified entry decides). Bounded, oldest out."""

    def __init__(self, max_items: int = 10_000) -> None:
        self.max_items = max_items
        self._items: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_key: str) -> str | None:
        return self._items.get(session_key)

    def learn(self, session_key: str, found: tuple[cache.Lookup, cache.UserRead | None]) -> None:
        entry = found[0].entry
        uid = entry.user if entry is not None else None
        with self._lock:
            if uid is None:
                self._items.pop(session_key, None)
                return
            self._items[session_key] = uid
            self._items.move_to_end(session_key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


hints = _Hints()


def _on_cluster() -> bool:
    return bool(hotcache_settings.REDIS_CLUSTER)


def _cluster_commands(session_key: str) -> tuple[list[tuple[Any, ...]], str | None]:
    """The session's MGET, and the user's MGET when this process knows which user the session names (that user)."""
    commands: list[tuple[Any, ...]] = [("MGET", entry_key(session_key), version_key(session_key))]
    uid = hints.get(session_key)
    if uid is not None:
        from hotcache.users import entries as user_entries

        commands.append(("MGET", user_entries.entry_key(uid), user_entries.version_key(uid)))
    return commands, uid


def _settle_cluster(
    session_key: str, replies: list[Any], uid: str | None
) -> tuple[cache.Lookup, cache.UserRead | None] | None:
    """The parallel reads' replies (``uid``: the user whose keys were read, if any) as the combined script's; None
    when the session's read failed."""
    session = replies[0]
    if isinstance(session, Exception):
        return None
    user = replies[1] if uid is not None and len(replies) > 1 else None
    if user is None or isinstance(user, Exception):
        uid, user = None, None
    entry_raw, version = session
    user_entry, user_version = user if user is not None else (None, None)
    with metering.feature(FEATURE):
        found = cache.settle_parts(session_key, entry_raw, version, uid, user_entry, user_version)
    hints.learn(session_key, found)
    return found


def read_with_user(session_key: str) -> tuple[cache.Lookup, cache.UserRead | None] | None:
    """The session and its user in one round trip (cache.read_with_user); on a Redis Cluster the two reads sent
    together, one round trip per node in parallel. None when Redis is unavailable."""
    if not _on_cluster():
        return cache.read_with_user(session_key)
    commands, uid = _cluster_commands(session_key)
    try:
        replies = redis_backend.call(FEATURE, lambda r: cluster.send_once(r, commands))
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        return None
    if isinstance(replies[0], Exception):
        metering.event(FEATURE, "fallback")
        return None
    return _settle_cluster(session_key, replies, uid)


class Companion:
    """The session-and-user read of one request, queued in another feature's pipeline (the rate limit's)."""

    __slots__ = ("commands", "session", "session_key", "uid")

    def __init__(self, session: Any, session_key: str) -> None:
        self.session = session
        self.session_key = session_key
        self.commands = 1
        self.uid: str | None = None  # on a cluster: the user whose keys were queued

    def queue(self, pipe: Any) -> None:
        """The script on one server; on a cluster the session's and the user's MGETs (routed to their nodes)."""
        if _on_cluster():
            commands, self.uid = _cluster_commands(self.session_key)
            self.commands = len(commands)
            for command in commands:
                pipe.execute_command(*command)
        else:
            cache.queue_read_with_user(pipe, self.session_key)

    def settle(self, raw: Any) -> None:
        """Hand the reply (a list of replies for several commands) to the session store; any failure leaves the
        store to read on its own, as without it."""
        try:
            if _on_cluster():
                found = _settle_cluster(self.session_key, raw if self.commands > 1 else [raw], self.uid)
            else:
                found = cache.settle_read_with_user(self.session_key, raw)
        except (RedisError, TypeError, ValueError):
            return
        if found is not None:
            self.session.prefetched(self.session_key, found)


def companion_for(request: HttpRequest) -> Companion | None:
    """The request's session read to send with the rate-limit decision, or None when there is none to make:
    not hotcache's session engine, already loaded, no valid cookie, sessions disabled, invalidations owed
    (read() replays them first), or the combined read not wanted."""
    session = getattr(request, "session", None)
    if session is None or not hasattr(session, "prefetched") or hasattr(session, "_session_cache"):
        return None
    session_key = session.session_key
    if not valid_key(session_key) or not hotcache_settings.enabled(FEATURE) or cache.pending_invalidations:
        return None
    if not wanted(session):
        return None
    return Companion(session, session_key)
