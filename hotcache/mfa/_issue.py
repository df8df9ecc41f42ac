"""issue(): a new code on Redis, or on MongoDB while Redis is unreachable; never a code Redis may also hold.

See docs/mfa.md ("Across the two stores", "A lost reply").
"""

from __future__ import annotations

from hotcache import metering
from hotcache.exceptions import MongoUnavailable, MongoWriteError, RedisUnavailable
from hotcache.mfa import _fallback, _hot, _marker
from hotcache.mfa._codes import digest, new_code, validate
from hotcache.mfa._conf import FEATURE, Limits, limits, log, now_ms
from hotcache.mfa._results import MfaUnavailable

__all__ = ["issue"]


def issue(user_id: str | int, purpose: str = "login") -> str:
    """A new code for ``user_id`` and ``purpose`` (replacing any earlier one), for the caller to deliver.

    Raises ResendTooSoon inside the resend cooldown or over the hourly cap, MfaUnavailable when
    neither store answers, InvalidName for a bad user_id or purpose.
    """
    user, purpose = validate(user_id, purpose)
    conf = limits()
    code = new_code(conf.digits)
    issued_at = now_ms()
    try:
        _hot.issue(user, purpose, digest(user, purpose, code), issued_at, conf)
    except RedisUnavailable as exc:
        metering.event(FEATURE, "fallback")
        if exc.maybe_applied:
            code, issued_at = _instead_of_a_lost_issue(user, purpose, code, issued_at, conf)
        _marker.saw_outage(issued_at, conf.ttl_ms)
        try:
            _fallback.issue(user, purpose, digest(user, purpose, code), issued_at, conf)
        except (MongoUnavailable, MongoWriteError) as down:
            metering.event(FEATURE, "unavailable")
            log.warning("hotcache: mfa issue failed: Redis and MongoDB are both unavailable (%s)", down)
            msg = "cannot issue an MFA code: Redis and MongoDB are both unavailable"
            raise MfaUnavailable(msg) from down
    metering.event(FEATURE, "issued")
    return code


def _instead_of_a_lost_issue(user: str, purpose: str, code: str, issued_at: int, conf: Limits) -> tuple[str, int]:
    """Redis may hold ``code`` (the issue's reply was lost): another code, issued later, to store on MongoDB.

    ``code`` is never handed out, so nobody can submit it, and the code handed out lives in MongoDB
    alone: each succeeds at most once. It is issued at least 1 ms later, so once Redis is back verify()
    takes it as newer than the record Redis may hold; that record is burned by this process's next
    mfa call that reaches Redis.
    """
    metering.event(FEATURE, "in_doubt")
    _hot.owe_burn(user, purpose, digest(user, purpose, code), issued_at)
    return new_code(conf.digits, unlike=code), max(now_ms(), issued_at + 1)
