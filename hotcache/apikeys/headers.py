"""The one parser of an API key from a request's headers (require_api_key, the DRF adapter, rate limits).

Read in this order: ``Authorization: Api-Key <key>`` (whatever follows: a bad one is refused, never
bypassed), then the APIKEY_HEADER header (default ``X-Api-Key``), then ``Authorization: Bearer <token>``
when the token has the shape of a hotcache key (other bearer tokens, JWTs, are left to their own
authentication). See docs/apikeys.md ("Reading the key from a request").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hotcache.apikeys._records import KEY_RE, MAX_HEADER
from hotcache.conf import hotcache_settings

__all__ = ["key_from_headers", "key_from_request"]


def key_from_headers(meta: Mapping[str, Any]) -> str | None:
    """The raw key from a WSGI/ASGI ``META`` mapping (``HTTP_<NAME>`` keys); None when the request carries none.

    The value is returned as sent (check() validates it); only a bearer token is shape-checked first.
    """
    auth = meta.get("HTTP_AUTHORIZATION", "")
    if isinstance(auth, str) and auth[:8].lower() == "api-key ":
        return auth[8:]
    header = str(hotcache_settings.APIKEY_HEADER)
    value = meta.get("HTTP_" + header.upper().replace("-", "_"))
    if isinstance(value, str):
        return value
    if isinstance(auth, str) and auth[:7].lower() == "bearer ":
        token = auth[7:]
        if len(token) <= MAX_HEADER and KEY_RE.fullmatch(token):
            return token
    return None


def key_from_request(request: Any) -> str | None:
    """key_from_headers() of a Django (or DRF) request."""
    meta = getattr(request, "META", None)
    return key_from_headers(meta) if isinstance(meta, Mapping) else None
