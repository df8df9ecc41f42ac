"""verify(): Redis first; MongoDB when Redis is unreachable, or on a Redis miss within a code's lifetime of an
outage (a code issued there meanwhile). Results, never raises. See docs/mfa.md ("Across the two stores")."""

from __future__ import annotations

from hotcache import metering
from hotcache.exceptions import MongoUnavailable, MongoWriteError, RedisUnavailable
from hotcache.mfa import _fallback, _hot, _marker
from hotcache.mfa._codes import digest, typed_code, validate
from hotcache.mfa._conf import FEATURE, limits, log, now_ms, seconds
from hotcache.mfa._results import Reason, VerifyResult

__all__ = ["verify"]

_REDIS_REASONS = {
    "missing": Reason.EXPIRED_OR_MISSING,
    "used": Reason.EXPIRED_OR_MISSING,
    "burned": Reason.TOO_MANY_ATTEMPTS,
    "burned_now": Reason.TOO_MANY_ATTEMPTS,
    "invalid": Reason.INVALID,
}

_EVENTS = {
    Reason.OK: "verified",
    Reason.INVALID: "failed",
    Reason.EXPIRED_OR_MISSING: "expired",
    Reason.TOO_MANY_ATTEMPTS: "failed",
    Reason.UNAVAILABLE: "unavailable",
}


def verify(user_id: str | int, code: str, purpose: str = "login") -> VerifyResult:
    """Check ``code`` for ``user_id`` and ``purpose``, consuming it on success (one success per code, ever).

    Expected outcomes are results, never raises (except InvalidName for a bad user_id or purpose).
    """
    user, purpose = validate(user_id, purpose)
    conf = limits()
    typed = typed_code(code, conf.digits)
    if typed is None:
        return _record(VerifyResult(False, Reason.INVALID))  # cannot be a code: no store is touched
    code_digest = digest(user, purpose, typed)
    now = now_ms()
    try:
        answer = _hot.verify(user, purpose, code_digest, now, conf)
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        _marker.saw_outage(now, conf.ttl_ms)
        try:
            result = _fallback.verify(user, purpose, code_digest, conf, newer_than_ms=None)
        except (MongoUnavailable, MongoWriteError) as exc:
            log.warning("hotcache: mfa verify failed closed: Redis and MongoDB are both unavailable (%s)", exc)
            result = VerifyResult(False, Reason.UNAVAILABLE)
        assert result is not None
        return _record(result)

    status = answer.status
    if status == "ok":
        return _record(VerifyResult(True, Reason.OK, store="redis"))
    if status == "capped":
        return _record(VerifyResult(False, Reason.TOO_MANY_ATTEMPTS, retry_after=seconds(answer.n), store="redis"))
    redis_result = VerifyResult(
        False,
        _REDIS_REASONS[status],
        attempts_left=answer.n if status == "invalid" else None,
        store="redis",
        burned=status == "burned_now",
    )
    if max(answer.marker_ms, _marker.horizon_ms()) <= now:
        # No outage within a code's lifetime (no marker in Redis, none known here): MongoDB holds no
        # live code, so Redis's answer is final and MongoDB is not touched.
        return _record(redis_result)
    # Redis holds no usable code for this guess and an outage happened within a code's lifetime: a
    # newer code may have been issued on MongoDB meanwhile.
    try:
        newer = _fallback.verify(
            user, purpose, code_digest, conf, newer_than_ms=int(answer.iat) if answer.iat else 0
        )
    except (MongoUnavailable, MongoWriteError) as exc:
        log.warning("hotcache: mfa could not check MongoDB for a code issued during an outage: %s", exc)
        newer = None
    if newer is None:
        return _record(redis_result)
    if newer.ok and status in ("invalid", "burned_now"):
        # The Redis code predates the one just used: it was superseded, so it must not succeed later.
        _hot.drop_superseded(user, purpose)
    return _record(newer)


def _record(result: VerifyResult) -> VerifyResult:
    if result.burned:
        metering.event(FEATURE, "burned")
    metering.event(FEATURE, _EVENTS[result.reason])
    return result
