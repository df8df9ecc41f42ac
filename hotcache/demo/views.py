"""Views of the demo site. Small on purpose: the work being shown is hotcache's, in the middleware and services."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hotcache demo home\n", content_type="text/plain")


def whoami(request: HttpRequest) -> JsonResponse:
    user = request.user
    return JsonResponse({"authenticated": bool(user.is_authenticated), "username": user.get_username()})
