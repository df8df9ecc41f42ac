"""RateLimitMiddleware: every rule of HOTCACHE['RATELIMIT_RULES'] that matches a request, in one Redis round trip;
429 + Retry-After when any denies. Sync and async: under ASGI the user is resolved with ``auser()`` and the decision
awaited on the event loop (hotcache.ratelimit.acore), with no thread hop.

Place it after AuthenticationMiddleware when a rule keys on the user. It is also django-ratelimit's
``RatelimitMiddleware`` (same name here): a ``Ratelimited`` raised by a view goes to ``RATELIMIT_VIEW`` when set,
else becomes the rules' 429. See docs/ratelimit.md ("Global rules", "Per view").
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from django.utils.module_loading import import_string

from hotcache._hybrid import HybridMiddleware
from hotcache.ratelimit.acore import aevaluate_in
from hotcache.ratelimit.core import Companion, evaluate_in, refuse_missing
from hotcache.ratelimit.exceptions import Ratelimited
from hotcache.ratelimit.headers import set_headers
from hotcache.ratelimit.limits import Decision, Limit
from hotcache.ratelimit.options import Snapshot, compat_settings
from hotcache.ratelimit.rules import limits_for, rules_need_user
from hotcache.ratelimit.state import LocalState, local_state

__all__ = ["RateLimitMiddleware", "RatelimitMiddleware", "check_request"]


def check_request(request: HttpRequest) -> Decision:
    """Evaluate every matching rule for ``request`` (one round trip) and store it in ``request.ratelimit``."""
    return _check(request, local_state())


def _check(request: HttpRequest, state: LocalState) -> Decision:
    limits, refused = _limits(request)
    if refused:
        decision = refuse_missing(limits, refused)
    else:
        decision = evaluate_in(state, limits, companion=_companion(request, state) if limits else None)
    request.ratelimit = decision  # type: ignore[attr-defined]
    return decision


async def _acheck(request: HttpRequest, state: LocalState) -> Decision:
    """_check() with the round trip awaited on the event loop."""
    limits, refused = _limits(request)
    if refused:
        decision = refuse_missing(limits, refused)
    else:
        decision = await aevaluate_in(state, limits, companion=_companion(request, state) if limits else None)
    request.ratelimit = decision  # type: ignore[attr-defined]
    return decision


def _limits(request: HttpRequest) -> tuple[list[Limit], list[Limit]]:
    """The rules' limits for ``request`` and those refused for a missing identifier (rules.limits_for)."""
    names: set[str] | None = None

    def url_names() -> set[str]:
        nonlocal names
        if names is None:
            try:
                match = resolve(request.path_info)
                names = {n for n in (match.url_name, match.view_name) if n}
            except Resolver404:
                names = set()
        return names

    return limits_for(request, url_names)


def _companion(request: HttpRequest, state: LocalState) -> Companion | None:
    """The request's session-and-user read to send in the decision's round trip (hotcache.sessions.combined).

    A request without a session (no SessionMiddleware before this one) or with sessions disabled (read from the
    settings snapshot, not from Django's settings per request) has none, without importing anything."""
    if getattr(request, "session", None) is None or not state.settings.sessions:
        return None
    companion_for = _companion_for()
    return None if companion_for is None else companion_for(request)


@functools.cache
def _companion_for() -> Callable[[HttpRequest], Companion | None] | None:
    """hotcache.sessions.combined.companion_for, imported once; None when django.contrib.sessions is absent."""
    try:
        from hotcache.sessions.combined import companion_for
    except ImportError:  # django.contrib.sessions absent: no session to read
        return None
    return companion_for


def _denied_response(decision: Decision, snapshot: Snapshot) -> HttpResponse:
    first = decision.denied[0].name if decision.denied else None
    return _too_many(decision.retry_after, first, snapshot)


def _too_many(retry: int, rule: str | None, snapshot: Snapshot) -> HttpResponse:
    """The one denied answer, for the rules and for a @ratelimit view's Ratelimited alike."""
    body = {"detail": "Too many requests.", "rule": rule, "retry_after": retry}
    response = JsonResponse(body, status=snapshot.status_code)
    response["Retry-After"] = str(retry)
    return response


class RateLimitMiddleware(HybridMiddleware):
    """Apply HOTCACHE['RATELIMIT_RULES'] to every request; 429 + Retry-After when any matching rule denies.

    Also turns a ``Ratelimited`` raised by a view (``@ratelimit(block=True)``) into django-ratelimit's
    ``RATELIMIT_VIEW(request, exception)`` when that is set, else into the rules' answer (RATELIMIT_STATUS_CODE
    with Retry-After); either way with the RateLimit headers, instead of Django's 403 and a logged traceback.
    """

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        state = local_state()  # one settings read for the whole request
        decision = _check(request, state)
        if not decision.allowed:
            response = _denied_response(decision, state.settings)
        else:
            response = self.get_response(request)
        set_headers(response, decision, state.settings)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, Ratelimited):
            return None
        snapshot = local_state().settings
        retry = max(1, int(exception.retry_after or 1))
        view = compat_settings().view
        if view:
            response: HttpResponse = import_string(view)(request, exception)
            if not response.has_header("Retry-After"):
                response["Retry-After"] = str(retry)
        else:
            denied = exception.decision.denied if exception.decision is not None else ()
            response = _too_many(retry, denied[0].name if denied else None, snapshot)
        if exception.decision is not None:
            set_headers(response, exception.decision, snapshot)
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        if hasattr(request, "auser") and rules_need_user():
            request.user = await request.auser()  # resolve the user on the event loop, not in the worker
        state = local_state()
        decision = await _acheck(request, state)
        if not decision.allowed:
            response = _denied_response(decision, state.settings)
        else:
            response = await self.get_response(request)
        set_headers(response, decision, state.settings)
        return response


# django-ratelimit's name and place (``django_ratelimit.middleware.RatelimitMiddleware``): MIDDLEWARE switches by
# changing the path alone. It is the same class: with no RATELIMIT_RULES it only handles Ratelimited.
RatelimitMiddleware = RateLimitMiddleware
