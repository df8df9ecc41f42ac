"""CachedAuthenticationMiddleware: a lazy ``request.user`` (and ``request.auser()``) from hotcache.users.session.

Sync and async: under ASGI it sets both without a thread hop, and ``auser()`` awaits the cached user on the
event loop (hotcache.users.aio). See docs/users.md.
"""

from __future__ import annotations

from collections.abc import Awaitable
from functools import partial
from typing import Any, cast

from django.contrib.auth.middleware import AuthenticationMiddleware
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from hotcache.users.aio import aget_user
from hotcache.users.session import get_user

__all__ = ["CachedAuthenticationMiddleware"]


class CachedAuthenticationMiddleware(AuthenticationMiddleware):
    """Drop-in for django.contrib.auth.middleware.AuthenticationMiddleware; sync and async capable.

    A subclass of Django's, so checks that require it (admin.E408) accept this one in its place.
    """

    def process_request(self, request: HttpRequest) -> None:
        if not hasattr(request, "session"):
            msg = (
                "hotcache's CachedAuthenticationMiddleware requires session middleware to be installed. "
                "Put 'django.contrib.sessions.middleware.SessionMiddleware' before it in MIDDLEWARE."
            )
            raise ImproperlyConfigured(msg)
        if hasattr(request.session, "hotcache_user_wanted"):
            # hotcache.sessions: read this request's user in the session's round trip (docs/sessions.md).
            request.session.hotcache_user_wanted = True
        # A lazy proxy for the user, as Django's AuthenticationMiddleware sets; the stubs type the attribute as a user.
        request.user = SimpleLazyObject(lambda: _request_user(request))  # type: ignore[assignment]
        request.auser = partial(_arequest_user, request)

    async def __acall__(self, request: HttpRequest) -> Any:
        # Django's MiddlewareMixin runs process_request in a worker thread under ASGI; it only sets two lazy
        # attributes (no I/O), so it runs here, on the event loop.
        self.process_request(request)
        return await cast(Awaitable[Any], self.get_response(request))


# _cached_user and _acached_user are the memo attributes Django's own auth middleware sets on the request; the
# stubs do not declare them.
def _request_user(request: HttpRequest) -> Any:
    if not hasattr(request, "_cached_user"):
        # An async view resolved it already (auser()): the same user, not a second read.
        request._cached_user = getattr(request, "_acached_user", None) or get_user(request)  # type: ignore[attr-defined]
    return request._cached_user  # type: ignore[attr-defined]


async def _arequest_user(request: HttpRequest) -> Any:
    if hasattr(request, "_cached_user"):
        return request._cached_user
    if not hasattr(request, "_acached_user"):
        # On the event loop: the session's aload() and the cached user's read are awaited, no thread hop.
        request._acached_user = await aget_user(request)  # type: ignore[attr-defined]
    return request._acached_user  # type: ignore[attr-defined]
