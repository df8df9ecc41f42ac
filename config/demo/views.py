"""Views of the demo site. Small on purpose: the work being shown is hotcache's, in the middleware and services."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from hotcache import workbench
from hotcache.apikeys import require_api_key
from hotcache.conf import hotcache_settings
from hotcache.exceptions import BackendUnavailable


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hotcache demo home\n", content_type="text/plain")


def whoami(request: HttpRequest) -> JsonResponse:
    user = request.user
    return JsonResponse({"authenticated": bool(user.is_authenticated), "username": user.get_username()})


# --- Cached users ---
def _signed_in(view: Callable[[HttpRequest], JsonResponse]) -> Callable[[HttpRequest], JsonResponse]:
    """The view for a signed-in request.user; 401 {"authenticated": false} for an anonymous one."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest) -> JsonResponse:
        if not request.user.is_authenticated:
            return JsonResponse({"authenticated": False}, status=401)
        return view(request)

    return wrapped


@_signed_in
def user_profile(request: HttpRequest) -> JsonResponse:
    """What a page typically reads from request.user (no permission lookups: those are per-request queries)."""
    user = request.user
    return JsonResponse(
        {
            "authenticated": True,
            "id": user.pk,
            "username": user.get_username(),
            "first_name": getattr(user, "first_name", ""),
            "is_staff": bool(getattr(user, "is_staff", False)),
        }
    )


async def user_profile_async(request: HttpRequest) -> JsonResponse:
    user = await request.auser()
    return JsonResponse({"authenticated": bool(user.is_authenticated), "username": user.get_username()})


@csrf_exempt
@require_POST
@_signed_in
def user_rename(request: HttpRequest) -> JsonResponse:
    """A user edits their profile (a save() mid-run: the cached entry must not outlive it)."""
    user = request.user
    head, _, _ = user.first_name.partition("-")
    user.first_name = f"v{int(head[1:] or 0) + 1}-{user.pk}"
    user.save(update_fields=["first_name"])
    return JsonResponse({"first_name": user.first_name})


@csrf_exempt
@require_POST
@_signed_in
def user_deactivate(request: HttpRequest) -> JsonResponse:
    """An account is closed: its sessions must be rejected from the next request on."""
    user = request.user
    user.is_active = False
    user.save()
    return JsonResponse({"is_active": False})


# --- API keys ---
@require_api_key
def api_usage(request: HttpRequest) -> JsonResponse:
    usage = request.api_key  # type: ignore[attr-defined]
    return JsonResponse({"key_id": usage.key_id, "owner": usage.owner, "used_today": usage.used_today,
                         "remaining": usage.remaining})


@require_api_key
async def api_usage_async(request: HttpRequest) -> JsonResponse:
    usage = request.api_key  # type: ignore[attr-defined]
    return JsonResponse({"key_id": usage.key_id, "used_today": usage.used_today})


# --- MFA codes ---
# A login's second step. A real view sends the code by email or SMS; the demo hands it back in the
# response ("delivered") so the scenario can play the user typing it.




def _mfa_user(request: HttpRequest) -> str:
    return request.POST.get("user", "")


# The demo drives these like a JSON API client (no browser session, so no CSRF cookie).
@csrf_exempt
def mfa_issue(request: HttpRequest) -> JsonResponse:
    from hotcache import mfa
    from hotcache.exceptions import InvalidName

    if request.method != "POST":
        return JsonResponse({"error": "POST only"}, status=405)
    try:
        code = mfa.issue(_mfa_user(request))
    except InvalidName as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    except mfa.ResendTooSoon as exc:
        response = JsonResponse({"error": exc.reason, "retry_after": exc.retry_after}, status=429)
        response["Retry-After"] = str(exc.retry_after)
        return response
    except mfa.MfaUnavailable:
        return JsonResponse({"error": "unavailable"}, status=503)
    return JsonResponse({"sent": True, "delivered": code})


@csrf_exempt
def mfa_verify(request: HttpRequest) -> JsonResponse:
    from hotcache import mfa
    from hotcache.exceptions import InvalidName

    if request.method != "POST":
        return JsonResponse({"error": "POST only"}, status=405)
    try:
        result = mfa.verify(_mfa_user(request), request.POST.get("code", ""))
    except InvalidName as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    status = {"ok": 200, "too_many_attempts": 429, "unavailable": 503}.get(result.reason.value, 401)
    return JsonResponse({"ok": result.ok, "reason": result.reason.value, "store": result.store}, status=status)


# --- Rate limiting ---
@csrf_exempt
def ratelimit_login(request: HttpRequest) -> JsonResponse:
    """A stand-in login endpoint; RateLimitMiddleware's rules guard it."""
    rules = getattr(request, "ratelimit", None)
    return JsonResponse({"ok": True, "rules": [r.name for r in rules.results] if rules else []})


def ratelimit_api(request: HttpRequest) -> JsonResponse:
    rules = getattr(request, "ratelimit", None)
    return JsonResponse({"items": [], "rules": [r.name for r in rules.results] if rules else []})


# --- Workbench ---------------------------------------------------------------------------
# A JSON API over hotcache.workbench: open/save, edit (server-side read-modify-write with versions), load, end.
# Whatever a client sends, the answer is JSON and never a 500: 400 names the refused field ("body" when the body
# itself is not a JSON object), 404 no such session, 405 another method, 409 a version or owner conflict, 413 a
# body over 2 x WORKBENCH_MAX_STATE_BYTES + 4 KiB (room for JSON escapes), 503 Redis and MongoDB both down.

_BODY_SLACK = 4096
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class _Refused(Exception):
    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.response = JsonResponse({"error": message, "field": field}, status=status)


def _allow(*methods: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    def wrap(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def inner(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = JsonResponse({"error": f"use {' or '.join(methods)}", "field": "method"}, status=405)
                response["Allow"] = ", ".join(methods)
                return response
            return view(request, *args, **kwargs)

        return inner

    return wrap


def _deep_field(text: str, limit: int) -> str | None:
    """The top-level field of JSON ``text`` whose value nests deeper than ``limit`` levels, else None.

    A scan of string and bracket tokens (no recursion), run before json.loads so that a hostile body never
    reaches the recursive parser; it stops as soon as the limit is passed.
    """
    depth, field = 0, ""
    for match in _JSON_TOKEN.finditer(text):
        part = match.group()
        if part[0] == '"':
            if depth == 1:
                field = part
        elif part in "[{":
            depth += 1
            if depth > limit:
                # Only a plain field name is echoed back; anything else is reported as the body's.
                name = field[1:-1]
                return name if _FIELD_NAME.fullmatch(name) and text.lstrip().startswith("{") else "body"
        else:
            depth -= 1
    return None


def _json_body(request: HttpRequest) -> dict[str, Any]:
    """The request body as a JSON object ({} when empty); _Refused (400 or 413 naming the field) otherwise."""
    limit = 2 * int(hotcache_settings.WORKBENCH_MAX_STATE_BYTES) + _BODY_SLACK
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    too_big = f"request body is over {limit} bytes (2 x HOTCACHE['WORKBENCH_MAX_STATE_BYTES'] + {_BODY_SLACK})"
    if length > limit:
        raise _Refused("body", too_big, 413)
    try:
        raw = request.body
    except RequestDataTooBig:
        raise _Refused("body", too_big, 413) from None
    if len(raw) > limit:
        raise _Refused("body", too_big, 413)
    if not raw:
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused("body", "request body is not UTF-8 text") from None
    # The state may nest WORKBENCH_MAX_DEPTH levels, and the body object holding it is one more.
    depth = int(hotcache_settings.WORKBENCH_MAX_DEPTH)
    field = _deep_field(text, depth + 1)
    if field is not None:
        raise _Refused(field, f"{field} nests objects and arrays more than {depth} levels deep "
                       "(HOTCACHE['WORKBENCH_MAX_DEPTH'])")
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _Refused("body", f"request body is not JSON: {str(exc)[:120]}") from None
    if not isinstance(body, dict):
        raise _Refused("body", f"request body must be a JSON object, not {type(body).__name__}")
    return body


def _invalid(exc: workbench.InvalidInput, *, field: str | None = None) -> JsonResponse:
    return JsonResponse({"error": str(exc), "field": field or exc.field}, status=400)


_UNAVAILABLE = {"error": "Redis and MongoDB are both unavailable", "field": None}


def _answered(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
    """A workbench view whose refusals are answered as JSON: a _Refused body or field as raised, InvalidInput a
    400 naming its field, Redis and MongoDB both down a 503 (a view catches anything more specific itself)."""

    @functools.wraps(view)
    def inner(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        try:
            return view(request, *args, **kwargs)
        except _Refused as exc:
            return exc.response
        except workbench.InvalidInput as exc:
            return _invalid(exc)
        except BackendUnavailable:
            return JsonResponse(_UNAVAILABLE, status=503)

    return inner


@csrf_exempt
@_allow("POST")
@_answered
def workbench_save(request: HttpRequest, session_id: str) -> JsonResponse:
    body = _json_body(request)
    options = {"expected_owner": body["expected_owner"]} if "expected_owner" in body else {}
    try:
        version = workbench.save(
            session_id, body.get("state"), owner=body.get("owner"), expected_version=body.get("expected_version"),
            **options,
        )
    except workbench.Conflict as exc:
        return JsonResponse({"error": "conflict", "current": exc.current, "field": "expected_version"}, status=409)
    except workbench.OwnerConflict as exc:
        return JsonResponse({"error": str(exc), "field": "owner"}, status=409)
    return JsonResponse({"version": version})


@csrf_exempt
@_allow("POST")
@_answered
def workbench_edit(request: HttpRequest, session_id: str) -> JsonResponse:
    """Apply one edit to the session's state: load, change, save with expected_version, retry on conflict."""
    cell = _json_body(request).get("cell", "")
    if not isinstance(cell, str):
        raise _Refused("cell", f"cell must be a string, not {type(cell).__name__}")
    if not cell.isascii():
        try:
            cell.encode("utf-8")
        except UnicodeEncodeError:
            raise _Refused("cell", "cell holds a lone surrogate (not UTF-8 text)") from None
    for _ in range(5):
        session = workbench.load(session_id)
        if session is None:
            return JsonResponse({"error": "no such session", "field": "session_id"}, status=404)
        state = dict(session.state)
        # The stored state is whatever its owner saved: take "edits" and "cells" only when they have the shape
        # this view gives them.
        edits, cells = state.get("edits"), state.get("cells")
        edits = edits if isinstance(edits, int) and not isinstance(edits, bool) else 0
        cells = cells if isinstance(cells, list) else []
        state["edits"] = edits + 1
        state["cells"] = [*cells[-49:], cell]
        try:
            version = workbench.save(session_id, state, expected_version=session.version)
        except workbench.Conflict:
            continue
        except workbench.InvalidInput as exc:
            # The cell is the only client input in the new state: a state refused now is the cell's doing.
            return _invalid(exc, field="cell" if exc.field == "state" else None)
        return JsonResponse({"version": version, "edits": state["edits"]})
    return JsonResponse({"error": "conflict", "field": "expected_version"}, status=409)


@_allow("GET", "HEAD")
@_answered
def workbench_load(request: HttpRequest, session_id: str) -> JsonResponse:
    session = workbench.load(session_id)
    if session is None:
        return JsonResponse({"error": "no such session", "field": "session_id"}, status=404)
    return JsonResponse({"version": session.version, "state": session.state})


@csrf_exempt
@_allow("POST")
@_answered
def workbench_end(request: HttpRequest, session_id: str) -> JsonResponse:
    ended = workbench.end(session_id)
    return JsonResponse({"ended": ended}, status=200 if ended else 404)
