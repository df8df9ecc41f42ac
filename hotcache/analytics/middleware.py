"""AnalyticsMiddleware: a page view tracked for each successful GET on the configured paths.
See docs/analytics.md ("Public API").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from django.http import HttpRequest, HttpResponse
from django.utils.encoding import escape_uri_path

from hotcache import metering
from hotcache.analytics._events import FEATURE, MAX_RAW_PATH_LENGTH
from hotcache.analytics._hot import track
from hotcache.analytics._http import anonymous_visitor, request_user_id
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


class AnalyticsMiddleware:
    """Tracks ``page_view`` for successful GET responses on paths in ANALYTICS_MIDDLEWARE_INCLUDE and not in
    ANALYTICS_MIDDLEWARE_EXCLUDE (prefixes). Visitor: the user, else the session, else a digest of the client's
    address and User-Agent (never stored raw). One Redis round trip per tracked page view; nothing for the rest.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.method == "GET" and 200 <= response.status_code < 300:
            path = request.path_info
            if _matches(path, hotcache_settings.ANALYTICS_MIDDLEWARE_INCLUDE) and not _matches(
                path, hotcache_settings.ANALYTICS_MIDDLEWARE_EXCLUDE
            ):
                _page_view(request)
        return response
