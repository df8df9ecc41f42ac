"""The session and its cached user read together, and with the rate-limit decision: one round trip per request.

No middleware of its own: combining happens when hotcache's pieces meet on a request (docs/sessions.md, "One
round trip per request"). With ``SESSION_ENGINE = "hotcache.sessions"`` and hotcache.users'
``CachedAuthenticationMiddleware`` on the request (it sets ``hotcache_user_wanted`` on the session), a session
read also reads the user its entry names
(session_user_read.lua); with ``RateLimitMiddleware`` too, that read rides in the rate-limit decision's pipeline
(``companion_for``). Each part keeps its own checks, gate and fallbacks; only the round trips are shared. On Redis
Cluster the script cannot run (the user's keys are derived inside it): each read is made on its own there.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from redis.exceptions import RedisError

from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.sessions import cache
from hotcache.sessions.entries import FEATURE, valid_key

__all__ = ["Companion", "companion_for", "wanted"]


def wanted(session: Any) -> bool:
    """Whether ``session``'s read should bring its user: hotcache.users' middleware asked for it on this request
    (``session.hotcache_user_wanted``), the feature is enabled, and the server can run the combined script (not a
    cluster)."""
    return (
        getattr(session, "hotcache_user_wanted", False)
        and hotcache_settings.enabled("users")
        and cache.combined_read_possible(redis_backend.get_client())
    )


class Companion:
    """The session-and-user read of one request, queued in another feature's pipeline (the rate limit's)."""

    __slots__ = ("plan", "session", "session_key")

    def __init__(self, session: Any, session_key: str) -> None:
        self.session = session
        self.session_key = session_key
        self.plan: cache.ReadPlan | None = None

    def queue(self, pipe: Any) -> None:
        self.plan = cache.queue_read_with_user(pipe, self.session_key)

    def settle(self, raw: Any) -> None:
        """Hand the reply to the session store; any failure leaves the store to read on its own, as without it."""
        try:
            found = cache.settle_read_with_user(self.session_key, raw, self.plan)
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
