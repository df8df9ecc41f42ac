"""Rule keys: what ``ip``, ``user``, ``user_or_ip``, ``api_key``, ``header:``/``get:``/``post:`` or a key function
give as a request's identifier, or None (no identifier: the rule's ``on_missing_key`` applies).

Client-supplied text passes one boundary (``keys.text``); identifiers the project computes are bounded by a
digest; API keys are keyed on an HMAC, never on the key. See docs/ratelimit.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from hotcache import clientip, keys
from hotcache.exceptions import InvalidName
from hotcache.ratelimit.limits import MAX_IDENTIFIER
from hotcache.ratelimit.state import local_state

__all__ = [
    "ACCESSOR_KEYS",
    "ADDRESS_KEYS",
    "MISSING_KEY_CHOICES",
    "SHARED_IDENTIFIER",
    "SIMPLE_KEYS",
    "default_on_missing_key",
    "key_value",
]

log = logging.getLogger("hotcache.ratelimit")

SIMPLE_KEYS = ("ip", "user", "user_or_ip", "api_key")
ACCESSOR_KEYS = ("header", "get", "post")
ADDRESS_KEYS = ("ip", "user_or_ip")  # keys that fall back to the client address: it should always be there
MISSING_KEY_CHOICES = ("skip", "shared", "deny")
SHARED_IDENTIFIER = ""  # the bucket of every request whose key gives no identifier (on_missing_key="shared")


def default_on_missing_key(key: Any) -> str:
    """What a middleware rule without ``on_missing_key`` does when its key gives no identifier.

    ``shared`` for ``ip`` and ``user_or_ip``: every request should have an address, so one without is
    limited in one bucket with the others rather than not at all. ``skip`` for the rest: an anonymous
    visitor, a request without an API key or header is simply not what such a rule is about.
    """
    return "shared" if key in ADDRESS_KEYS else "skip"


def _client_text(value: Any, what: str) -> str | None:
    """A client-supplied identifier (header, GET/POST field, API key) if it is usable text, else None.

    The one boundary for such text (keys.text): empty, over MAX_IDENTIFIER characters, control
    characters or lone surrogates make it *no identifier*, so the rule's on_missing_key applies.
    """
    if value is None:
        return None
    try:
        return keys.text(value, what=what, max_length=MAX_IDENTIFIER)
    except InvalidName:
        return None


def _bounded(value: str) -> str:
    # An identifier computed by the project (user pk, key function) is kept as is when short; a long
    # one is replaced by its digest, so the deny cache and the local limiter stay bounded in memory.
    if len(value) <= MAX_IDENTIFIER:
        return value
    return "~" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _api_key_digest(request: Any) -> str | None:
    # First the parser hotcache's API keys use (APIKEY_HEADER, "Authorization: Api-Key <key>", a Bearer key),
    # so a rule keyed on api_key buckets every key require_api_key would read, under the configured header.
    from hotcache.apikeys.headers import key_from_request

    raw = key_from_request(request)
    if not raw:
        # Beyond hotcache's own keys, any credential token in Authorization buckets its bearer (a JWT, a
        # token of another scheme): limiting per presented credential needs no knowledge of its format.
        auth = getattr(request, "META", {}).get("HTTP_AUTHORIZATION", "")
        scheme, _, token = auth.partition(" ") if isinstance(auth, str) else ("", "", "")
        if scheme.lower() in ("api-key", "apikey", "bearer", "token") and token.strip():
            raw = token.strip()
    raw = _client_text(raw, "API key") if raw else None
    if raw is None:
        return None
    secret = str(getattr(django_settings, "SECRET_KEY", "")).encode()
    # Secrets never reach a key: an HMAC of the presented key identifies the bucket.
    return hmac.new(secret, raw.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def _user_pk(request: Any) -> str | None:
    user = getattr(request, "user", None)
    pk = getattr(user, "pk", None) if getattr(user, "is_authenticated", False) else None
    return None if pk is None else str(pk)


def _client_address(request: Any) -> str | None:
    """The client's address bucket; None (and a warning, once per process) when there is no usable address."""
    value = clientip.client_bucket(request)
    if value is None and local_state().no_address_warning.first():
        remote = getattr(request, "META", {}).get("REMOTE_ADDR")
        log.warning(
            "hotcache: a request has no usable client address (REMOTE_ADDR=%.80r); rate limit rules keyed on "
            "ip or user_or_ip apply their on_missing_key to such requests (default: one shared bucket for "
            "all of them). A server on a Unix socket: add 'unix' to HOTCACHE['TRUSTED_PROXIES'] if the proxy "
            "in front appends X-Forwarded-For. Logged once per process.",
            remote,
        )
    return value


def key_value(key: str | Callable[..., Any], request: Any, group: str) -> str | None:
    """The identifier ``key`` gives for ``request``, or None when it has none: ``ip`` with no usable
    client address, ``user`` when anonymous, a missing, empty or unusable header/field/API key.

    Keys: ``ip``, ``user``, ``user_or_ip``, ``api_key``, ``header:<name>``, ``get:<name>``,
    ``post:<name>``, a callable ``(group, request)`` or its dotted path (as django-ratelimit).
    """
    if key == "ip":
        return _client_address(request)
    if key == "user":
        value = _user_pk(request)
        return None if value is None else _bounded(value)
    if key == "user_or_ip":
        value = _user_pk(request)
        return _bounded(f"user:{value}") if value is not None else _client_address(request)
    if key == "api_key":
        return _api_key_digest(request)
    if callable(key):
        value = key(group, request)
    elif isinstance(key, str) and ":" in key and key.split(":", 1)[0] in ACCESSOR_KEYS:
        accessor, name = key.split(":", 1)
        if accessor == "header":
            raw = request.META.get("HTTP_" + name.replace("-", "_").upper())
        elif accessor == "get":
            raw = request.GET.get(name)
        else:
            raw = request.POST.get(name)  # a body Django refuses raises here: Django's 400, as in the view
        return _client_text(raw, key)
    elif isinstance(key, str) and "." in key:
        try:
            fn = import_string(key)
        except ImportError as exc:
            raise ImproperlyConfigured(f"Ratelimit key {key!r:.80} does not import: {exc}") from exc
        value = fn(group, request)
    else:
        raise ImproperlyConfigured(f"Unknown ratelimit key: {key!r:.80}")
    if value is None or value == "":
        return None
    return _bounded(value if isinstance(value, str) else str(value))
