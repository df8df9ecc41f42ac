"""System checks for MFA codes (E030-E039, W030-W039). Each message names the setting and the fix."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Tags, Warning, register

from hotcache.checks._common import (
    number_setting_errors,
    range_errors,
)
from hotcache.checks._common import (
    setting as _setting,
)
from hotcache.conf import hotcache_settings

# --- MFA codes (E030-E039) ---


@register(Tags.compatibility)
def check_mfa(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """MFA code settings: whole numbers, and values that keep guessing a code hard."""
    if not hotcache_settings.enabled("mfa"):
        return []
    errors = number_setting_errors(
        (
            "MFA_CODE_TTL",
            "MFA_DIGITS",
            "MFA_MAX_ATTEMPTS",
            "MFA_USER_FAILURE_LIMIT",
            "MFA_USER_FAILURE_WINDOW",
            "MFA_HOURLY_SEND_CAP",
        ),
        integer=True,
    )
    errors += number_setting_errors(("MFA_RESEND_COOLDOWN",), integer=True, allow_zero=True)
    if errors:
        return errors
    # The numbers are valid whole numbers above 0 from here on: each range below is its upper bound.
    errors += range_errors(
        "MFA_DIGITS",
        6,
        10,
        "is outside 6-10.",
        hint="Use 6 to 10 digits (default 6): fewer make a code guessable, more do not fit an SMS line.",
        check_id="hotcache.E030",
    )
    errors += range_errors(
        "MFA_MAX_ATTEMPTS",
        1,
        10,
        "allows too many guesses per code.",
        hint="Use at most 10 wrong guesses per code (default 5; RFC 4226 section 7.3).",
        check_id="hotcache.E031",
    )
    errors += range_errors(
        "MFA_CODE_TTL",
        1,
        3600,
        "seconds keeps codes alive for more than an hour.",
        hint="Use at most 3600 seconds (default 300): a one-time code should be short-lived.",
        check_id="hotcache.E032",
    )
    attempts = hotcache_settings.MFA_MAX_ATTEMPTS
    limit = hotcache_settings.MFA_USER_FAILURE_LIMIT
    if limit < attempts:
        errors.append(
            Warning(
                f"{_setting('MFA_USER_FAILURE_LIMIT')}={limit!r} is below {_setting('MFA_MAX_ATTEMPTS')}={attempts!r}.",
                hint="The per-user cap then locks users out before a code uses its own attempts; "
                "set MFA_USER_FAILURE_LIMIT to at least MFA_MAX_ATTEMPTS (default 10 and 5).",
                id="hotcache.W030",
            )
        )
    return errors
