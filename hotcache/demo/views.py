"""Views of the demo site. Small on purpose: the work being shown is hotcache's, in the middleware and services."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hotcache demo home\n", content_type="text/plain")


def whoami(request: HttpRequest) -> JsonResponse:
    user = request.user
    return JsonResponse({"authenticated": bool(user.is_authenticated), "username": user.get_username()})


# --- Rate limiting (issue 3) ---
@csrf_exempt
def ratelimit_login(request: HttpRequest) -> JsonResponse:
    """A stand-in login endpoint; RateLimitMiddleware's rules guard it."""
    rules = getattr(request, "ratelimit", None)
    return JsonResponse({"ok": True, "rules": [r.name for r in rules.results] if rules else []})


def ratelimit_api(request: HttpRequest) -> JsonResponse:
    rules = getattr(request, "ratelimit", None)
    return JsonResponse({"items": [], "rules": [r.name for r in rules.results] if rules else []})
