"""System checks for API keys (E040-E049). Each message names the setting and the fix."""

from __future__ import annotations

import re
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register

from hotcache.checks._common import (
    is_number,
    number_setting_errors,
)
from hotcache.checks._common import (
    setting as _setting,
)
from hotcache.conf import hotcache_settings

# --- API keys (E040-E049) ---


@register(Tags.compatibility)
def check_apikeys(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if not hotcache_settings.enabled("apikeys"):
        return []
    errors = number_setting_errors(
        ("APIKEY_USAGE_RETENTION_DAYS", "APIKEY_CACHE_TTL", "APIKEY_INVALID_CACHE_TTL"), integer=True
    )
    days = hotcache_settings.APIKEY_USAGE_RETENTION_DAYS
    if is_number(days, integer=True) and days == 1:
        errors.append(
            Error(
                f"{_setting('APIKEY_USAGE_RETENTION_DAYS')}=1: yesterday's counters would expire before the "
                "first usage sync after midnight copies them to MongoDB.",
                hint="Use 2 or more (default 30).",
                id="hotcache.E040",
            )
        )
    header = hotcache_settings.APIKEY_HEADER
    if not isinstance(header, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9\-]{0,63}", header) or (
        header.lower() == "authorization"
    ):
        errors.append(
            Error(
                f"{_setting('APIKEY_HEADER')}={header!r} is not a usable HTTP header name.",
                hint="Use letters, digits and '-' (default 'X-Api-Key'); "
                "'Authorization: Api-Key <key>' is always read as well.",
                id="hotcache.E041",
            )
        )
    return errors
