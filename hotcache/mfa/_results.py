"""What issue() and verify() give back: VerifyResult and its Reason (refusals are results), and the two raises.

See docs/mfa.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hotcache.exceptions import BackendUnavailable, HotcacheError

__all__ = ["MfaUnavailable", "Reason", "ResendTooSoon", "VerifyResult"]


class Reason(enum.StrEnum):
    OK = "ok"
    INVALID = "invalid"
    EXPIRED_OR_MISSING = "expired_or_missing"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of verify(); truthy only for ``Reason.OK``."""

    ok: bool
    reason: Reason
    attempts_left: int | None = None  # for INVALID: wrong guesses this code still tolerates
    retry_after: int | None = None  # for TOO_MANY_ATTEMPTS from the user's failure cap: seconds
    store: str = "none"  # where the decision was made: redis | mongodb | none
    burned: bool = False  # this wrong guess used the code's last attempt

    def __bool__(self) -> bool:
        return self.ok


class ResendTooSoon(HotcacheError):
    """issue() was called inside the resend cooldown or over the hourly send cap."""

    def __init__(self, retry_after: int, reason: str = "cooldown") -> None:
        self.retry_after = retry_after
        self.reason = reason  # "cooldown" | "hourly_cap"
        super().__init__(f"a new code can be sent in {retry_after} s ({reason})")


class MfaUnavailable(BackendUnavailable):
    """Neither Redis nor MongoDB answered, so no code could be issued."""

    backend = "redis and mongodb"
