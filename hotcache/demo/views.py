"""Views of the demo site. Small on purpose: the work being shown is hotcache's, in the middleware and services."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hotcache demo home\n", content_type="text/plain")


def whoami(request: HttpRequest) -> JsonResponse:
    user = request.user
    return JsonResponse({"authenticated": bool(user.is_authenticated), "username": user.get_username()})


# --- API keys (issue 6) ---
from hotcache.apikeys import require_api_key  # noqa: E402 - kept inside the feature's block


@require_api_key
def api_usage(request: HttpRequest) -> JsonResponse:
    usage = request.api_key  # type: ignore[attr-defined]
    return JsonResponse({"key_id": usage.key_id, "owner": usage.owner, "used_today": usage.used_today,
                         "remaining": usage.remaining})


@require_api_key
async def api_usage_async(request: HttpRequest) -> JsonResponse:
    usage = request.api_key  # type: ignore[attr-defined]
    return JsonResponse({"key_id": usage.key_id, "used_today": usage.used_today})
