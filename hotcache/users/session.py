"""A request's user: django.contrib.auth.get_user() with the user taken from the cache, every check kept.

The session's backend must be configured, the backend's user_can_authenticate() passes, and the
session's auth hash matches in constant time; any mismatch is settled by the source of truth as
Django does (SECRET_KEY_FALLBACKS, flush). See docs/users.md ("How it works").
"""

from __future__ import annotations

import hmac
import re
from typing import TYPE_CHECKING, Any, Literal

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AnonymousUser

from hotcache.exceptions import InvalidName
from hotcache.users import cache, entries
from hotcache.users.loaders import UserLoader, get_loader

if TYPE_CHECKING:
    from django.http import HttpRequest

__all__ = ["get_user"]

_MISS = object()
_SURROGATE = re.compile("[\ud800-\udfff]")
_Verdict = Literal["match", "ask", "fallback", "flush"]


def get_user(request: HttpRequest) -> Any:
    """django.contrib.auth.get_user() with the user taken from Redis when it is cached.

    A session whose user id is not a primary key of the user model (a list, a huge or unprintable
    string) is anonymous, where Django's own get_user() would raise.
    """
    try:
        session_id = request.session[auth.SESSION_KEY]
        backend_path = request.session[auth.BACKEND_SESSION_KEY]
    except KeyError:
        return AnonymousUser()
    resolved = _resolve(session_id, backend_path)
    if resolved is None:
        return AnonymousUser()
    user_id, loader, backend = resolved
    if not loader.handles(backend):
        # A backend with its own get_user(): Django's path, uncached.
        if _unmatchable(request.session):
            request.session.flush()
            return AnonymousUser()
        return auth.get_user(request)
    can_authenticate = getattr(backend, "user_can_authenticate", lambda u: True)
    prefetched = _take_prefetched(request.session)
    cached, fill = cache.lookup(user_id, loader, prefetched)
    if cached is not None:
        if not can_authenticate(cached.user):
            return AnonymousUser()
        verified = _verify(request, cached.user, cached.auth_hash, authoritative=False)
        if verified is not _MISS:
            return verified or AnonymousUser()
        fill = None  # the cached entry is current; the mismatch is the session's
    user = loader.load(user_id.value)
    if user is None:
        return AnonymousUser()
    if fill is not None:
        fill(user)
    if not can_authenticate(user):
        return AnonymousUser()
    auth_hash = user.get_session_auth_hash() if hasattr(user, "get_session_auth_hash") else None
    return _verify(request, user, auth_hash, authoritative=True) or AnonymousUser()


def _resolve(session_id: object, backend_path: object) -> tuple[entries.UserId, UserLoader, Any] | None:
    """The session's user id, the loader and the session's auth backend; None when the session names no user
    (either value _MISS, a backend not in AUTHENTICATION_BACKENDS, an id that is not a primary key).
    get_user()'s and aget_user()'s checks, in one place."""
    if session_id is _MISS or not isinstance(backend_path, str):
        return None
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    loader = get_loader()
    try:
        user_id = entries.user_id(session_id, loader.model)
    except InvalidName:
        return None
    return user_id, loader, auth.load_backend(backend_path)


def _unmatchable(session: Any) -> bool:
    """The session's auth hash holds a lone surrogate. Django encodes the hash to compare it and raises on one;
    such a hash can match nothing: the caller logs out, as Django would."""
    session_hash = session.get(auth.HASH_SESSION_KEY)  # the session is loaded already: no I/O
    return isinstance(session_hash, str) and _SURROGATE.search(session_hash) is not None


def _take_prefetched(session: Any) -> Any:
    """The user's entry that hotcache.sessions' read brought with the session (one round trip for both), or None.
    Used once: a later get_user() in the same request (after a save or an invalidation) reads again."""
    prefetched = getattr(session, "hotcache_user", None)
    if prefetched is not None:
        session.hotcache_user = None  # hotcache.sessions' store has it
    return prefetched


def _verdict(request: HttpRequest, user: Any, auth_hash: str | None, *, authoritative: bool) -> _Verdict:
    """Django's session check, without its session writes (get_user() and aget_user() make them, sync or
    awaited). ``authoritative``: ``user`` came from the source of truth (fallbacks apply).

    "match": the session is the user's; "ask": not authoritative, let the source of truth decide (password
    changed elsewhere, SECRET_KEY_FALLBACKS); "fallback": a SECRET_KEY_FALLBACKS hash matches (cycle the key);
    "flush": no hash matches (log out)."""
    if auth_hash is None and not hasattr(user, "get_session_auth_hash"):
        return "match"
    session_hash = request.session.get(auth.HASH_SESSION_KEY)
    if auth_hash and _same(session_hash, auth_hash):
        return "match"
    if not authoritative:
        return "ask"
    if any(_same(session_hash, fallback) for fallback in user.get_session_auth_fallback_hash()):
        return "fallback"
    return "flush"


def _verify(request: HttpRequest, user: Any, auth_hash: str | None, *, authoritative: bool) -> Any | None:
    """_verdict() acted on: ``user`` when the session is the user's, _MISS to ask the source of truth, None
    (the session flushed) when it is not."""
    verdict = _verdict(request, user, auth_hash, authoritative=authoritative)
    if verdict == "fallback":
        request.session.cycle_key()
        request.session[auth.HASH_SESSION_KEY] = auth_hash
    elif verdict == "flush":
        request.session.flush()
        return None
    return _MISS if verdict == "ask" else user


def _same(given: object, expected: str) -> bool:
    """A session hash against ours, in constant time; any value a session can hold is just False when unequal."""
    if not isinstance(given, str) or not given:
        return False
    # Bytes, not str: hmac.compare_digest refuses non-ASCII text (a TypeError, i.e. a 500, before this).
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))
