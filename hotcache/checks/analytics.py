"""System checks for analytics (E060-E069). Each message names the setting and the fix."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register

from hotcache.checks._common import (
    is_number,
    number_setting_errors,
)
from hotcache.checks._common import (
    setting as _setting,
)
from hotcache.conf import DEFAULTS, hotcache_settings

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
    errors += number_setting_errors(("ANALYTICS_SYNC_GRACE", "ANALYTICS_BATCH_SECONDS"), allow_zero=True)
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
    if is_number(retention, integer=True) and 0 < retention < 48:
        errors.append(
            Error(
                f"{_setting('ANALYTICS_RETENTION_HOURS')}={retention!r}: counters not synced within this many hours "
                "expire from Redis.",
                hint="Use at least 48 (default 168) so a missed hourly sync or a weekend outage loses nothing.",
                id="hotcache.E062",
            )
        )
    length = hotcache_settings.ANALYTICS_MAX_PATH_LENGTH
    if is_number(length, integer=True) and not 16 <= length <= 1024:
        errors.append(
            Error(
                f"{_setting('ANALYTICS_MAX_PATH_LENGTH')}={length!r} is outside 16-1024.",
                hint="Use 16-1024 characters (default 200): paths are stored per counter in Redis and MongoDB.",
                id="hotcache.E063",
            )
        )
    grace = hotcache_settings.ANALYTICS_SYNC_GRACE
    if is_number(grace) and grace >= 3600:
        errors.append(
            Error(
                f"{_setting('ANALYTICS_SYNC_GRACE')}={grace!r} seconds is an hour or more.",
                hint="Use 0-3599 seconds (default 300): the hourly sync claims an hour this long after it ends.",
                id="hotcache.E064",
            )
        )
    return errors
