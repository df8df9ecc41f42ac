"""What the API key functions return and raise: results for expected outcomes, errors for the rest.

See docs/apikeys.md ("API").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from hotcache import metering
from hotcache.exceptions import HotcacheError

__all__ = ["InvalidKey", "KeyInfo", "KeyNotFound", "NewKey", "Usage", "UsageSyncResult", "invalid", "usage_result"]

log = logging.getLogger("hotcache.apikeys")

FEATURE = "apikeys"
PREFIX_LEN = 8  # characters of public prefix before the "." of a key


class InvalidKey(HotcacheError, ValueError):
    """The API key is malformed, unknown, revoked or expired (the message never says which; the log does)."""

    def __init__(self) -> None:
        super().__init__("invalid API key")


class KeyNotFound(HotcacheError, LookupError):
    """No API key has this key_id."""


@dataclasses.dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    raw_key: str  # shown once; hotcache keeps only its SHA-256

    def __repr__(self) -> str:  # keep the secret out of tracebacks and logs
        return f"NewKey(key_id={self.key_id!r}, raw_key='{self.raw_key[:PREFIX_LEN]}.***')"


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    allowed: bool
    key_id: str
    owner: str
    used_today: int  # uses counted today, including this one when allowed
    limit: int | None
    remaining: int | None
    reset_at: dt.datetime  # next UTC midnight: when the daily count starts again


@dataclasses.dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    prefix: str
    owner: str
    name: str
    daily_limit: int | None
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    used_today: int


@dataclasses.dataclass(frozen=True, slots=True)
class UsageSyncResult:
    """What one sync_usage() run did (hotcache.apikeys.SyncResult is the same class)."""

    keys: int  # key records considered
    days: int
    written: int  # (key, day) totals written to MongoDB
    bases_pushed: int  # MongoDB-counted totals pushed back into Redis
    redis_available: bool
    error: str = ""  # why the run stopped (Redis or MongoDB unavailable); "" when it finished

    def why_stopped(self) -> str:
        """What stopped the run and why nothing is lost ("" when it finished): for the command and the task."""
        if not self.error:
            return ""
        return (
            f"usage sync stopped: {self.error}. Nothing is lost: the daily counters stay in Redis "
            "(APIKEY_USAGE_RETENTION_DAYS) and the next run copies them; after an outage of over a day, run "
            "'manage.py sync_apikey_usage --days N' once with N covering it."
        )


def next_midnight(now: dt.datetime) -> dt.datetime:
    return dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def invalid(reason: str, prefix: str) -> InvalidKey:
    """The error for a refused key, counted and logged with the reason and the public prefix only."""
    metering.event(FEATURE, "invalid")
    log.info("hotcache apikeys: rejected key (prefix %s): %s", prefix or "-", reason)
    return InvalidKey()


def usage_result(allowed: bool, key_id: str, owner: str, used: int, limit: int | None, now: dt.datetime) -> Usage:
    """The Usage of a decided check, counted as allowed or over_limit."""
    metering.event(FEATURE, "allowed" if allowed else "over_limit")
    return Usage(
        allowed=allowed,
        key_id=key_id,
        owner=owner,
        used_today=used,
        limit=limit,
        remaining=None if limit is None else max(0, limit - used),
        reset_at=next_midnight(now),
    )
