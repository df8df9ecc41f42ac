"""The MFA feature's names, the settings a call runs with, and its units of time. See docs/mfa.md."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from hotcache import clock
from hotcache.conf import hotcache_settings

__all__ = ["COLLECTION", "FEATURE", "HOUR_MS", "Limits", "limits", "log", "now_ms", "seconds", "text"]

FEATURE = "mfa"
COLLECTION = "mfa_codes"
HOUR_MS = 3_600_000

log = logging.getLogger("hotcache.mfa")


@dataclass(frozen=True, slots=True)
class Limits:
    """The MFA_* settings in the units the stores use (ms), read once per HOTCACHE dict."""

    ttl_ms: int
    digits: int
    max_attempts: int
    fail_limit: int
    window_ms: int
    cooldown_ms: int
    cap: int


def _build() -> Limits:
    s = hotcache_settings
    return Limits(
        ttl_ms=int(s.MFA_CODE_TTL) * 1000,
        digits=int(s.MFA_DIGITS),
        max_attempts=int(s.MFA_MAX_ATTEMPTS),
        fail_limit=int(s.MFA_USER_FAILURE_LIMIT),
        window_ms=int(s.MFA_USER_FAILURE_WINDOW) * 1000,
        cooldown_ms=int(s.MFA_RESEND_COOLDOWN) * 1000,
        cap=int(s.MFA_HOURLY_SEND_CAP),
    )


def limits() -> Limits:
    return hotcache_settings.derived("mfa.limits", _build)


def now_ms() -> int:
    """The app clock in ms: issue times in both stores and the outage marker use it."""
    return int(clock.time() * 1000)


def seconds(ms: float) -> int:
    """A wait in ms as whole seconds for Retry-After: rounded up, at least 1."""
    return max(1, math.ceil(ms / 1000))


def text(value: Any) -> str:
    """A value from Redis (bytes) or Python as str."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
