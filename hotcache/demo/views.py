"""Views of the demo site. Small on purpose: the work being shown is hotcache's, in the middleware and services."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hotcache demo home\n", content_type="text/plain")


def whoami(request: HttpRequest) -> JsonResponse:
    user = request.user
    return JsonResponse({"authenticated": bool(user.is_authenticated), "username": user.get_username()})


# --- MFA codes (issue 5) ---
# A login's second step. A real view sends the code by email or SMS; the demo hands it back in the
# response ("delivered") so the scenario can play the user typing it.


from django.views.decorators.csrf import csrf_exempt  # noqa: E402


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
