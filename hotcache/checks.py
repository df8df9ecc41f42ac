"""Django system checks for HOTCACHE. Each message names the setting and the fix.

Ids: E001-E009 foundation; E010-E019 rate limiting; E020-E029 cached users; E030-E039 MFA;
E040-E049 API keys; E050-E059 workbench; E060-E069 analytics; E070-E079 reports. W0xx are warnings.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from hotcache.conf import DEFAULTS, FEATURES, hotcache_settings

__all__ = ["check_foundation", "number_setting_errors"]

_MONGO_FEATURES = ("mfa", "apikeys", "workbench", "analytics")
_PREFIX = re.compile(r"[A-Za-z0-9_.\-]{1,32}")


def _setting(name: str) -> str:
    return f"HOTCACHE[{name!r}]"


def number_setting_errors(
    names: tuple[str, ...], *, minimum: float = 0, integer: bool = False, allow_zero: bool = False
) -> list[CheckMessage]:
    """hotcache.E004 for every named setting that is not a positive number (or int)."""
    errors: list[CheckMessage] = []
    for name in names:
        value = getattr(hotcache_settings, name)
        kind = int if integer else (int, float)
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok:
            ok = value >= minimum if allow_zero else value > minimum
        if not ok:
            errors.append(
                Error(
                    f"{_setting(name)}={value!r} is not a valid value.",
                    hint=f"Use a {'whole ' if integer else ''}number greater than {minimum}"
                    f"{' or equal to it' if allow_zero else ''} (default {DEFAULTS[name]!r}).",
                    id="hotcache.E004",
                )
            )
    return errors


@register(Tags.compatibility, Tags.caches)
def check_foundation(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    raw = getattr(settings, "HOTCACHE", {})
    if not isinstance(raw, dict):
        return [
            Error(
                f"HOTCACHE must be a dict, not {type(raw).__name__}.",
                hint="Set HOTCACHE = {...} in your settings; see hotcache.conf for the keys.",
                id="hotcache.E001",
            )
        ]
    for name in sorted(set(raw) - set(DEFAULTS)):
        errors.append(
            Warning(
                f"HOTCACHE[{name!r}] is not a hotcache setting and is ignored.",
                hint="Check the spelling against README.md, section Settings.",
                id="hotcache.W001",
            )
        )

    # Redis alias
    alias = hotcache_settings.REDIS_ALIAS
    caches = getattr(settings, "CACHES", {})
    if alias not in caches:
        errors.append(
            Error(
                f"{_setting('REDIS_ALIAS')}={alias!r} is not in CACHES.",
                hint=f"Add a django-redis cache named {alias!r} to CACHES, or point REDIS_ALIAS at one.",
                id="hotcache.E002",
            )
        )
    else:
        backend = str(caches[alias].get("BACKEND", ""))
        if not backend.startswith("django_redis."):
            errors.append(
                Error(
                    f"CACHES[{alias!r}] (named by {_setting('REDIS_ALIAS')}) uses {backend!r}, "
                    "not a django-redis backend.",
                    hint="Use 'django_redis.cache.RedisCache' for that alias; hotcache needs a real Redis "
                    "client for Lua scripts and its connection pool.",
                    id="hotcache.E003",
                )
            )

    prefix = hotcache_settings.KEY_PREFIX
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        errors.append(
            Error(
                f"{_setting('KEY_PREFIX')}={prefix!r} is not a valid key prefix.",
                hint="Use 1-32 characters from A-Z a-z 0-9 _ . - (no ':', braces or spaces).",
                id="hotcache.E005",
            )
        )

    errors += number_setting_errors(("REDIS_SOCKET_TIMEOUT", "REDIS_CONNECT_TIMEOUT", "HEALTH_COOLDOWN"))
    errors += number_setting_errors(
        (
            "HEALTH_FAILURE_THRESHOLD",
            "REDIS_DAILY_COMMAND_BUDGET",
            "REDIS_MEMORY_LIMIT",
            "METER_FLUSH_EVERY",
            "MONGO_MAX_POOL_SIZE",
            "MONGO_WAIT_QUEUE_TIMEOUT_MS",
            "MONGO_SERVER_SELECTION_TIMEOUT_MS",
            "MONGO_CONNECT_TIMEOUT_MS",
            "MONGO_SOCKET_TIMEOUT_MS",
            "MONGO_SERVER_CONNECTION_LIMIT",
        ),
        integer=True,
    )
    for name in ("REDIS_SOCKET_TIMEOUT", "REDIS_CONNECT_TIMEOUT"):
        value = getattr(hotcache_settings, name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 5:
            errors.append(
                Warning(
                    f"{_setting(name)}={value!r} seconds: every request may wait this long on a sick Redis.",
                    hint="Keep hotcache's Redis timeouts well under 1 second (default 0.1).",
                    id="hotcache.W002",
                )
            )

    features = hotcache_settings.FEATURES
    if features is not None and (
        not isinstance(features, list | tuple) or any(f not in FEATURES for f in features)
    ):
        errors.append(
            Error(
                f"{_setting('FEATURES')}={features!r} names unknown features.",
                hint=f"Use None (all) or a list drawn from {list(FEATURES)}.",
                id="hotcache.E006",
            )
        )
        features = None

    # MongoDB URL, where a feature needs one
    needing = [f for f in _MONGO_FEATURES if features is None or f in features]
    url = hotcache_settings.MONGO_URL
    if needing and not url:
        errors.append(
            Error(
                f"{_setting('MONGO_URL')} is not set, but {', '.join(needing)} keep durable data in MongoDB.",
                hint="Set it to mongodb://... or mongodb+srv://... (production) or mongomock://hotcache "
                "(tests, single-process development), or disable those features in HOTCACHE['FEATURES'].",
                id="hotcache.E007",
            )
        )
    elif url:
        from hotcache.backends.mongo import SCHEMES, url_scheme

        if not isinstance(url, str) or url_scheme(url) not in SCHEMES:
            errors.append(
                Error(
                    f"{_setting('MONGO_URL')}={str(url)[:40]!r}... has an unsupported scheme.",
                    hint="Use mongodb://, mongodb+srv:// or mongomock://<database>.",
                    id="hotcache.E008",
                )
            )
        elif url_scheme(url) == "mongomock" and not settings.DEBUG and "test" not in _settings_module():
            errors.append(
                Warning(
                    f"{_setting('MONGO_URL')} uses the in-process stand-in (mongomock://) with DEBUG off.",
                    hint="Its data lives in one process and is lost on restart; point MONGO_URL at a real "
                    "MongoDB in production.",
                    id="hotcache.W003",
                )
            )
    return errors


def _settings_module() -> str:
    import os

    return os.environ.get("DJANGO_SETTINGS_MODULE", "")


# Feature checks follow, each registered with @register under its own id range.

# --- Rate limiting (E010-E019) ---

# --- Cached users (E020-E029) ---

# --- MFA codes (E030-E039) ---

# --- API keys (E040-E049) ---

# --- Workbench (E050-E059) ---

# --- Analytics (E060-E069) ---


@register(Tags.compatibility)
def check_analytics(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E060 sync chunk over 1000; E061 path-prefix lists; E062 retention too short; E063 path length; E064 grace."""
    errors = number_setting_errors(
        (
            "ANALYTICS_RETENTION_HOURS",
            "ANALYTICS_MAX_COUNTERS_PER_HOUR",
            "ANALYTICS_MAX_EVENTS_PER_DAY",
            "ANALYTICS_MAX_PATH_LENGTH",
            "ANALYTICS_SYNC_CHUNK",
            "ANALYTICS_FALLBACK_BUFFER_SIZE",
            "ANALYTICS_TRACK_MAX_BODY",
        ),
        integer=True,
    )
    errors += number_setting_errors(("ANALYTICS_SYNC_LOCK_TIMEOUT",), integer=True, allow_zero=True)
    errors += number_setting_errors(("ANALYTICS_SYNC_GRACE",), allow_zero=True)
    errors += number_setting_errors(("ANALYTICS_FALLBACK_FLUSH_INTERVAL",))
    chunk = hotcache_settings.ANALYTICS_SYNC_CHUNK
    if isinstance(chunk, int) and chunk > 1000:
        errors.append(
            Error(
                f"{_setting('ANALYTICS_SYNC_CHUNK')}={chunk!r} is over 1000 counters per MongoDB bulk write.",
                hint="Use 1-1000 (default 1000): larger batches risk MongoDB's message limits and M0 throttling.",
                id="hotcache.E060",
            )
        )
    for name in ("ANALYTICS_MIDDLEWARE_INCLUDE", "ANALYTICS_MIDDLEWARE_EXCLUDE"):
        value = getattr(hotcache_settings, name)
        if not isinstance(value, list | tuple) or not all(isinstance(p, str) and p.startswith("/") for p in value):
            errors.append(
                Error(
                    f"{_setting(name)}={value!r} is not a list of path prefixes.",
                    hint=f"Use a list of strings starting with '/', e.g. {DEFAULTS[name]!r}.",
                    id="hotcache.E061",
                )
            )
    retention = hotcache_settings.ANALYTICS_RETENTION_HOURS
    if isinstance(retention, int) and not isinstance(retention, bool) and 0 < retention < 48:
        errors.append(
            Error(
                f"{_setting('ANALYTICS_RETENTION_HOURS')}={retention!r}: counters not synced within this many hours "
                "expire from Redis.",
                hint="Use at least 48 (default 168) so a missed hourly sync or a weekend outage loses nothing.",
                id="hotcache.E062",
            )
        )
    length = hotcache_settings.ANALYTICS_MAX_PATH_LENGTH
    if isinstance(length, int) and not isinstance(length, bool) and not 16 <= length <= 1024:
        errors.append(
            Error(
                f"{_setting('ANALYTICS_MAX_PATH_LENGTH')}={length!r} is outside 16-1024.",
                hint="Use 16-1024 characters (default 200): paths are stored per counter in Redis and MongoDB.",
                id="hotcache.E063",
            )
        )
    grace = hotcache_settings.ANALYTICS_SYNC_GRACE
    if isinstance(grace, int | float) and not isinstance(grace, bool) and grace >= 3600:
        errors.append(
            Error(
                f"{_setting('ANALYTICS_SYNC_GRACE')}={grace!r} seconds is an hour or more.",
                hint="Use 0-3599 seconds (default 300): the hourly sync claims an hour this long after it ends.",
                id="hotcache.E064",
            )
        )
    return errors

# --- Reports (E070-E079) ---
