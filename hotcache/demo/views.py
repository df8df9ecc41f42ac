"""Views of the demo site. Small on purpose: the work being shown is hotcache's, in the middleware and services."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hotcache demo home\n", content_type="text/plain")


def whoami(request: HttpRequest) -> JsonResponse:
    user = request.user
    return JsonResponse({"authenticated": bool(user.is_authenticated), "username": user.get_username()})


# --- Cached users (issue 4) ---


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
