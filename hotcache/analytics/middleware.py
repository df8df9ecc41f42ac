"""AnalyticsMiddleware: a page view tracked for each successful GET on the configured paths. Sync and async: under
ASGI the page view is awaited on the event loop (hotcache.analytics._atrack), no thread hop.
See docs/analytics.md ("Public API").
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable
from typing import Any, cast

from django.http import HttpRequest, HttpResponse
from django.utils.encoding import escape_uri_path

from hotcache import metering
from hotcache._hybrid import HybridMiddleware
from hotcache.analytics._atrack import atrack_event
from hotcache.analytics._events import (
    FEATURE,
    MAX_RAW_PATH_LENGTH,
    Event,
    check_count,
    check_user_id,
    check_visitor_id,
    normalize_path,
    validate_event,
    visitor_digest,
)
from hotcache.analytics._hot import track
from hotcache.analytics._http import anonymous_visitor, request_user_id, user_id_of
from hotcache.conf import hotcache_settings

__all__ = ["AnalyticsMiddleware"]

log = logging.getLogger("hotcache.analytics")


def _matches(path: str, prefixes: Iterable[str]) -> bool:
    return any(path.startswith(p) for p in prefixes)


def _page_view(request: HttpRequest) -> None:
    """Track ``page_view`` for ``request``. Django decodes %XX in path_info (``%0A`` is a newline there), so
    the path is re-escaped as the client sent it."""
    session = getattr(request, "session", None)
    visitor = getattr(session, "session_key", None) or anonymous_visitor(request)
    try:
        path = escape_uri_path(request.path_info)[:MAX_RAW_PATH_LENGTH]
        track("page_view", path=path, user_id=request_user_id(request), visitor_id=visitor)
    except ValueError as exc:  # InvalidName, or a path_info no server should hand over (a lone surrogate)
        # A page that answered 2xx is never turned into an error by its page view.
        metering.event(FEATURE, "rejected")
        log.info("hotcache analytics: page view not tracked: %s", exc)


async def _apage_view(request: HttpRequest) -> None:
    """_page_view() on the event loop: the user from ``auser()`` (never the lazy sync ``request.user``)."""
    session = getattr(request, "session", None)
    visitor = getattr(session, "session_key", None) or anonymous_visitor(request)
    auser = getattr(request, "auser", None)
    user = await auser() if auser is not None else getattr(request, "user", None)
    try:
        path = escape_uri_path(request.path_info)[:MAX_RAW_PATH_LENGTH]
        # track()'s boundary checks, then its write awaited.
        ev = Event(
            validate_event("page_view"),
            normalize_path(path),
            visitor_digest(check_user_id(user_id_of(user)), check_visitor_id(visitor)),
            check_count(1),
        )
    except ValueError as exc:
        metering.event(FEATURE, "rejected")
        log.info("hotcache analytics: page view not tracked: %s", exc)
        return
    await atrack_event(ev)


def _tracked(request: HttpRequest, response: HttpResponse) -> bool:
    if request.method != "GET" or not 200 <= response.status_code < 300:
        return False
    path = request.path_info
    return _matches(path, hotcache_settings.ANALYTICS_MIDDLEWARE_INCLUDE) and not _matches(
        path, hotcache_settings.ANALYTICS_MIDDLEWARE_EXCLUDE
    )


class AnalyticsMiddleware(HybridMiddleware):
    """Tracks ``page_view`` for successful GET responses on paths in ANALYTICS_MIDDLEWARE_INCLUDE and not in
    ANALYTICS_MIDDLEWARE_EXCLUDE (prefixes). Visitor: the user, else the session, else a digest of the client's
    address and User-Agent (never stored raw). One Redis round trip per tracked page view; nothing for the rest.
    """

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        response = self.get_response(request)
        if _tracked(request, response):
            _page_view(request)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        response = await cast(Awaitable[HttpResponse], self.get_response(request))
        if _tracked(request, response):
            await _apage_view(request)
        return response
