"""Views of the demo site. Small on purpose: the work being shown is hotcache's, in the middleware and services."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from hotcache import workbench
from hotcache.apikeys import require_api_key


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hotcache demo home\n", content_type="text/plain")


def whoami(request: HttpRequest) -> JsonResponse:
    user = request.user
    return JsonResponse({"authenticated": bool(user.is_authenticated), "username": user.get_username()})


# --- Cached users ---
def user_profile(request: HttpRequest) -> JsonResponse:
    """What a page typically reads from request.user (no permission lookups: those are per-request queries)."""
    user = request.user
    if not user.is_authenticated:
        return JsonResponse({"authenticated": False}, status=401)
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
def user_rename(request: HttpRequest) -> JsonResponse:
    """A user edits their profile (a save() mid-run: the cached entry must not outlive it)."""
    user = request.user
    if not user.is_authenticated:
        return JsonResponse({"authenticated": False}, status=401)
    head, _, _ = user.first_name.partition("-")
    user.first_name = f"v{int(head[1:] or 0) + 1}-{user.pk}"
    user.save(update_fields=["first_name"])
    return JsonResponse({"first_name": user.first_name})


@csrf_exempt
@require_POST
def user_deactivate(request: HttpRequest) -> JsonResponse:
    """An account is closed: its sessions must be rejected from the next request on."""
    user = request.user
    if not user.is_authenticated:
        return JsonResponse({"authenticated": False}, status=401)
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





def _workbench_body(request: HttpRequest) -> dict:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@csrf_exempt
@require_POST
def workbench_save(request: HttpRequest, session_id: str) -> JsonResponse:
    body = _workbench_body(request)
    try:
        version = workbench.save(
            session_id, body.get("state"), owner=body.get("owner"), expected_version=body.get("expected_version")
        )
    except workbench.Conflict as exc:
        return JsonResponse({"error": "conflict", "current": exc.current}, status=409)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"version": version})


@csrf_exempt
@require_POST
def workbench_edit(request: HttpRequest, session_id: str) -> JsonResponse:
    """Apply one edit to the session's state: load, change, save with expected_version, retry on conflict."""
    body = _workbench_body(request)
    try:
        for _ in range(5):
            session = workbench.load(session_id)
            if session is None:
                return JsonResponse({"error": "no such session"}, status=404)
            state = dict(session.state)
            state["edits"] = int(state.get("edits", 0)) + 1
            state["cells"] = [*state.get("cells", [])[-49:], body.get("cell", "")]
            try:
                version = workbench.save(session_id, state, expected_version=session.version)
            except workbench.Conflict:
                continue
            return JsonResponse({"version": version, "edits": state["edits"]})
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"error": "conflict"}, status=409)


@require_GET
def workbench_load(request: HttpRequest, session_id: str) -> JsonResponse:
    try:
        session = workbench.load(session_id)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    if session is None:
        return JsonResponse({"error": "no such session"}, status=404)
    return JsonResponse({"version": session.version, "state": session.state})


@csrf_exempt
@require_POST
def workbench_end(request: HttpRequest, session_id: str) -> JsonResponse:
    try:
        ended = workbench.end(session_id)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"ended": ended}, status=200 if ended else 404)
