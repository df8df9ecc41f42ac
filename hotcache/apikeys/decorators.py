"""require_api_key: the view decorator (sync and async) that turns check() into 401 / 429 / 503 answers.

See docs/apikeys.md ("Protecting views").
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

from hotcache import clock, metering
from hotcache.apikeys._acheck import acheck
from hotcache.apikeys._hot import check
from hotcache.apikeys._results import FEATURE, InvalidKey, Usage
from hotcache.apikeys.headers import key_from_request
from hotcache.conf import hotcache_settings
from hotcache.exceptions import BackendUnavailable

__all__ = ["require_api_key"]

log = logging.getLogger("hotcache.apikeys")


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    from django.http import JsonResponse

    response = JsonResponse(body, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _authorize(request: Any) -> Any:
    """None when the request may proceed (request.api_key set), else the 401/429/503 response."""
    raw = key_from_request(request)
    if raw is None or raw == "":
        return _no_key()
    try:
        return _answer(request, check(raw))
    except (InvalidKey, BackendUnavailable) as exc:
        return _refused(exc)


async def _aauthorize(request: Any) -> Any:
    """_authorize() awaited: the warm check on the event loop (acheck), the same answers."""
    raw = key_from_request(request)
    if raw is None or raw == "":
        return _no_key()
    try:
        return _answer(request, await acheck(raw))
    except (InvalidKey, BackendUnavailable) as exc:
        return _refused(exc)


def _no_key() -> Any:
    metering.event(FEATURE, "invalid")
    return _json(401, {"error": "api_key_required"}, {"WWW-Authenticate": "Api-Key"})


def _refused(exc: InvalidKey | BackendUnavailable) -> Any:
    """The 401 of an invalid key, or the 503 when both stores are down (fail closed)."""
    if isinstance(exc, InvalidKey):
        return _json(401, {"error": "invalid_api_key"}, {"WWW-Authenticate": "Api-Key"})
    retry = max(1, math.ceil(float(hotcache_settings.HEALTH_COOLDOWN)))
    log.error("hotcache apikeys: redis and mongodb unavailable; request refused (fail closed)")
    return _json(503, {"error": "api_keys_unavailable"}, {"Retry-After": str(retry)})


def _answer(request: Any, result: Usage) -> Any:
    """None when the checked key may proceed (request.api_key set either way), else the 429 response."""
    request.api_key = result
    if not result.allowed:
        retry = max(1, math.ceil((result.reset_at - clock.utcnow()).total_seconds()))
        return _json(
            429,
            {"error": "daily_limit_exceeded", "limit": result.limit, "reset_at": result.reset_at.isoformat()},
            {"Retry-After": str(retry)},
        )
    return None


def require_api_key(view: Callable[..., Any]) -> Callable[..., Any]:
    """View decorator (sync and async): 401 without a valid key, 429 over the daily limit; sets request.api_key.

    On an async view under ASGI the warm check runs on the event loop, no thread hop (see _acheck)."""
    from asgiref.sync import iscoroutinefunction

    if iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
            denied = await _aauthorize(request)
            if denied is not None:
                return denied
            return await view(request, *args, **kwargs)

        return async_wrapper

    @functools.wraps(view)
    def wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
        denied = _authorize(request)
        if denied is not None:
            return denied
        return view(request, *args, **kwargs)

    return wrapper
