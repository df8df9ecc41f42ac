"""A request's user: django.contrib.auth.get_user() with the user taken from the cache, every check kept.

The session's backend must be configured, the backend's user_can_authenticate() passes, and the
session's auth hash matches in constant time; any mismatch is settled by the source of truth as
Django does (SECRET_KEY_FALLBACKS, flush). See docs/users.md ("How it works").
"""

from __future__ import annotations

import hmac
import re
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AnonymousUser

from hotcache.exceptions import InvalidName
from hotcache.users import cache, entries
from hotcache.users.loaders import get_loader

if TYPE_CHECKING:
    from django.http import HttpRequest

__all__ = ["get_user"]

_MISS = object()
_SURROGATE = re.compile("[\ud800-\udfff]")


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
    if not isinstance(backend_path, str) or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return AnonymousUser()
    loader = get_loader()
    try:
        user_id = entries.user_id(session_id, loader.model)
    except InvalidName:
        return AnonymousUser()
    backend = auth.load_backend(backend_path)
    if not loader.handles(backend):
        # A backend with its own get_user(): Django's path, uncached. Django encodes the session hash to
        # compare it and raises on a lone surrogate; such a hash can match nothing: log out, as Django would.
        session_hash = request.session.get(auth.HASH_SESSION_KEY)
        if isinstance(session_hash, str) and _SURROGATE.search(session_hash):
            request.session.flush()
            return AnonymousUser()
        return auth.get_user(request)
    can_authenticate = getattr(backend, "user_can_authenticate", lambda u: True)

    # With hotcache.sessions, the session's read may have brought this user's entry (one round trip for both).
    # Used once: a later get_user() in the same request (after a save or an invalidation) reads again.
    prefetched = getattr(request.session, "hotcache_user", None)
    if prefetched is not None:
        request.session.hotcache_user = None  # type: ignore[attr-defined]  # hotcache.sessions' store has it
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


def _verify(request: HttpRequest, user: Any, auth_hash: str | None, *, authoritative: bool) -> Any | None:
    """Django's session check. ``authoritative``: ``user`` came from the source of truth (fallbacks apply)."""
    if auth_hash is None and not hasattr(user, "get_session_auth_hash"):
        return user
    session_hash = request.session.get(auth.HASH_SESSION_KEY)
    if auth_hash and _same(session_hash, auth_hash):
        return user
    if not authoritative:
        return _MISS  # let the source of truth decide (password changed elsewhere, SECRET_KEY_FALLBACKS)
    if any(_same(session_hash, fallback) for fallback in user.get_session_auth_fallback_hash()):
        request.session.cycle_key()
        request.session[auth.HASH_SESSION_KEY] = auth_hash
        return user
    request.session.flush()
    return None


def _same(given: object, expected: str) -> bool:
    """A session hash against ours, in constant time; any value a session can hold is just False when unequal."""
    if not isinstance(given, str) or not given:
        return False
    # Bytes, not str: hmac.compare_digest refuses non-ASCII text (a TypeError, i.e. a 500, before this).
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))
