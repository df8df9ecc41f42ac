"""The rate-limit settings the per-request path reads, taken once (``hotcache_settings.derived``): hotcache's
``HOTCACHE['RATELIMIT_*']`` (``Snapshot``) and django-ratelimit's top-level ``RATELIMIT_*`` (``Compat``).

``hotcache_settings`` reads django settings on every access (right for override_settings, but about a
microsecond each, more for an unset top-level setting); the request path reads these snapshots instead.
They are rebuilt when HOTCACHE is a new dict or Django's ``setting_changed`` names HOTCACHE or a
``RATELIMIT_*`` setting (override_settings, pytest-django's ``settings``). See docs/ratelimit.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings
from django.utils.module_loading import import_string

from hotcache import keys
from hotcache.conf import hotcache_settings

__all__ = ["COMPAT_SETTINGS", "Compat", "Snapshot", "compat_settings", "settings_snapshot"]

# django-ratelimit 4.1's settings (docs/settings.rst), read from the top level of Django's settings.
COMPAT_SETTINGS = (
    "RATELIMIT_CACHE_PREFIX",
    "RATELIMIT_ENABLE",
    "RATELIMIT_EXCEPTION_CLASS",
    "RATELIMIT_FAIL_OPEN",
    "RATELIMIT_HASH_ALGORITHM",
    "RATELIMIT_IP_META_KEY",
    "RATELIMIT_IPV4_MASK",
    "RATELIMIT_IPV6_MASK",
    "RATELIMIT_USE_CACHE",
    "RATELIMIT_VIEW",
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """This process's view of the rate-limit settings of one HOTCACHE dict (invalid values: their defaults)."""

    key_prefix: str
    deny_cache_size: int
    legacy_headers: bool
    status_code: int
    cluster: bool = False  # HOTCACHE['REDIS_CLUSTER']: rules on several slots are evaluated per slot (slots.py)
    sessions: bool = False  # HOTCACHE['FEATURES'] enables sessions: the decision may carry the session read

    @classmethod
    def build(cls) -> Snapshot:
        size = hotcache_settings.RATELIMIT_DENY_CACHE_SIZE
        status = hotcache_settings.RATELIMIT_STATUS_CODE
        return cls(
            key_prefix=keys.prefix(),
            deny_cache_size=size if isinstance(size, int) and not isinstance(size, bool) else 10_000,
            legacy_headers=bool(hotcache_settings.RATELIMIT_LEGACY_HEADERS),
            status_code=status if isinstance(status, int) and 400 <= status <= 599 else 429,
            cluster=bool(hotcache_settings.REDIS_CLUSTER),
            sessions=hotcache_settings.enabled("sessions"),
        )


def settings_snapshot() -> Snapshot:
    """This request's view of the rate-limit settings (one identity check when HOTCACHE is unchanged)."""
    return hotcache_settings.derived("ratelimit.settings", Snapshot.build)


@dataclass(frozen=True, slots=True)
class Compat:
    """django-ratelimit's settings as this process reads them (what ``manage.py check`` would flag: the default).

    ``fail_open`` is None when RATELIMIT_FAIL_OPEN is not set (then RATELIMIT_DEFAULT_POLICY decides an
    outage); ``hash`` digests a key's value before it reaches Redis (RATELIMIT_HASH_ALGORITHM).
    """

    enable: bool
    fail_open: bool | None
    view: str | None
    hash: Callable[[bytes], Any]

    @classmethod
    def build(cls) -> Compat:
        fail_open = getattr(django_settings, "RATELIMIT_FAIL_OPEN", None)
        view = getattr(django_settings, "RATELIMIT_VIEW", None)
        return cls(
            enable=bool(getattr(django_settings, "RATELIMIT_ENABLE", True)),
            fail_open=None if fail_open is None else bool(fail_open),
            view=view if isinstance(view, str) and view else None,
            hash=hash_algorithm(),
        )


def hash_algorithm() -> Callable[[bytes], Any]:
    """RATELIMIT_HASH_ALGORITHM (a callable or its dotted path, as django-ratelimit); sha256 if unusable."""
    value = getattr(django_settings, "RATELIMIT_HASH_ALGORITHM", None)
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError:
            value = None
    return value if callable(value) else hashlib.sha256


def compat_settings() -> Compat:
    """django-ratelimit's settings for this request (one identity check while nothing changed)."""
    return hotcache_settings.derived("ratelimit.compat", Compat.build)
