"""System checks for usage reports (E070-E079). Each message names the setting and the fix."""

from __future__ import annotations

import re
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register

from hotcache.checks._common import is_number, range_errors
from hotcache.checks._common import (
    setting as _setting,
)
from hotcache.conf import hotcache_settings

# --- Reports (E070-E079) ---


@register(Tags.compatibility)
def check_reports(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors = range_errors(
        "REPORTS_DAYS",
        1,
        40,
        "is not a whole number of days from 1 to 40.",
        hint="The meter keeps 40 days; use a whole number from 1 to 40 (default 30).",
        check_id="hotcache.E070",
    )
    pct = hotcache_settings.REPORTS_WARNING_PERCENT
    if not (is_number(pct) and 0 < pct <= 100):
        errors.append(
            Error(
                f"{_setting('REPORTS_WARNING_PERCENT')}={pct!r} is not a percentage above 0 and at most 100.",
                hint="Use a number such as 80 (default): the reports warn at that share of a budget or limit.",
                id="hotcache.E071",
            )
        )
    perm = hotcache_settings.REPORTS_PERMISSION
    if perm is not None and not (isinstance(perm, str) and re.fullmatch(r"[\w]+\.[\w]+", perm)):
        errors.append(
            Error(
                f"{_setting('REPORTS_PERMISSION')}={perm!r} is not a permission name.",
                hint="Use None (any active staff user) or 'app_label.codename', e.g. 'auth.view_user'.",
                id="hotcache.E072",
            )
        )
    return errors
