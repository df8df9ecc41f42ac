"""Django REST framework adapter for hotcache API keys (import only where djangorestframework is installed).

    REST_FRAMEWORK = {"DEFAULT_AUTHENTICATION_CLASSES": ["hotcache.apikeys_drf.ApiKeyAuthentication"]}
    class Things(APIView):
        permission_classes = [HasApiKey]

ApiKeyAuthentication runs apikeys.check() once per request: no key -> not this authenticator (None);
an invalid key -> 401; over the daily limit -> 429 with Retry-After until UTC midnight; both stores
down -> 503. ``request.auth`` and ``request.api_key`` are the Usage; ``request.user`` stays anonymous.
See docs/apikeys.md ("Django REST framework").
"""

from __future__ import annotations

import math
from typing import Any

from django.contrib.auth.models import AnonymousUser
from rest_framework import exceptions, permissions
from rest_framework.authentication import BaseAuthentication

from hotcache import clock
from hotcache.apikeys import InvalidKey, Usage, check, key_from_request
from hotcache.exceptions import BackendUnavailable

__all__ = ["ApiKeyAuthentication", "HasApiKey"]


class _Unavailable(exceptions.APIException):
    status_code = 503
    default_detail = "API keys cannot be checked right now."
    default_code = "api_keys_unavailable"


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Any) -> tuple[Any, Usage] | None:
        raw = key_from_request(request._request)
        if raw is None:
            return None
        try:
            usage = check(raw)
        except InvalidKey as exc:
            raise exceptions.AuthenticationFailed("Invalid API key.") from exc
        except BackendUnavailable as exc:
            raise _Unavailable() from exc
        request._request.api_key = usage
        if not usage.allowed:
            raise exceptions.Throttled(wait=max(1, math.ceil((usage.reset_at - clock.utcnow()).total_seconds())))
        return (AnonymousUser(), usage)

    def authenticate_header(self, request: Any) -> str:
        return "Api-Key"


class HasApiKey(permissions.BasePermission):
    """Allows the request only when ApiKeyAuthentication accepted a key."""

    def has_permission(self, request: Any, view: Any) -> bool:
        return isinstance(request.auth, Usage)
