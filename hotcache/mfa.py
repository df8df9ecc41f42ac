"""MFA one-time codes: issue() and verify(). Hashed at rest, single use under any concurrency, bounded guessing.

At rest there is only ``HMAC-SHA256(k, purpose NUL user NUL code)`` with ``k`` derived from Django's
SECRET_KEY (salted_hmac, salt "hotcache.mfa"), so nothing in Redis or MongoDB gives back a live code.
Digests are compared in constant time (a no-early-exit loop in Lua, hmac.compare_digest in Python).

Redis (the hot path, one round trip each):
  ``{mfa:<user>}:<purpose>:code``  hash d/a/iat/st, PEXPIRE = MFA_CODE_TTL
  ``{mfa:<user>}:<purpose>:cool``  resend cooldown marker;  ``...:sends`` sends this hour;
  ``{mfa:<user>}:<purpose>:fails`` wrong guesses in the user's failure window.
  mfa_issue.lua checks cooldown and cap and replaces the record; mfa_verify.lua checks the user's
  failure cap, compares, then either consumes (drops the digest, st=used) or HINCRBYs the attempts
  and burns the code at MFA_MAX_ATTEMPTS. A consumed or burned record stays as a tombstone (no
  digest) until the code's own expiry, which the cross-store rules below rely on.

MongoDB (the fallback, collection ``mfa_codes``, one document per user and purpose holding the same
state): find_one_and_update with ``st: live, expires_at > now, a < max`` counts the attempt and
returns the digest, compare_digest decides, and a second find_one_and_update conditioned on the
same digest and issue time consumes it; only one caller can win that. A TTL index on ``purge_at``
only collects garbage: every read filters on ``expires_at``.

Across the two stores. A code lives in exactly one store: the one that was reachable when it was
issued. Each store consumes its own codes atomically, so **a code succeeds at most once**, whatever
the interleaving with outages. verify() asks Redis first; Redis's answer is final when it is ``ok``
or the user's failure cap. Otherwise (no record, a wrong guess, a tombstone) it asks MongoDB for a
live code issued *after* the Redis record (issue times are app-clock milliseconds in both stores),
so a code issued on MongoDB during an outage verifies after Redis returns, a code that was issued on
Redis before an outage verifies once Redis is back, and an older MongoDB code superseded by a newer
Redis one (or by a tombstone of one) is refused. When a newer MongoDB code succeeds, the older Redis
record is deleted. Limit: while Redis is down, MongoDB cannot see or delete a code held in Redis, so
such a code reports ``expired_or_missing`` (the user can ask for a new code, which is issued on
MongoDB); if the user later submits the older Redis code first, it is accepted once and the newer
MongoDB code then remains usable once: two codes the user received, each single use. Resend
cooldown, hourly cap and failure counts are kept per store: a transition can at most double them.
When neither store answers, verify() returns ``unavailable`` (fail closed) and issue() raises
MfaUnavailable.
"""

from __future__ import annotations

import datetime as dt
import enum
import hmac
import logging
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

from django.utils.crypto import salted_hmac

from hotcache import clock, keys, metering
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import (
    BackendUnavailable,
    DuplicateKey,
    HotcacheError,
    MongoUnavailable,
    MongoWriteError,
    RedisUnavailable,
)

__all__ = ["MfaUnavailable", "Reason", "ResendTooSoon", "VerifyResult", "issue", "verify"]

log = logging.getLogger("hotcache.mfa")

FEATURE = "mfa"
COLLECTION = "mfa_codes"
_HOUR_MS = 3_600_000
_PURPOSE_PATTERN = r"[A-Za-z0-9_.\-]{1,32}"
_ISSUE = redis_backend.Script("mfa_issue")
_VERIFY = redis_backend.Script("mfa_verify")


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


# --- shared helpers ------------------------------------------------------------------------------


def _validate(user_id: object, purpose: object) -> tuple[str, str]:
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    user = keys.validate_name(user_id, what="user_id")
    return user, keys.validate_name(purpose, what="purpose", pattern=_PURPOSE_PATTERN)


def _digest(user: str, purpose: str, code: str) -> str:
    # NUL separators: validated names cannot contain NUL, so (purpose, user, code) maps to one message.
    message = f"{purpose}\x00{user}\x00{code}"
    return salted_hmac("hotcache.mfa", message, algorithm="sha256").hexdigest()


def _redis_keys(user: str, purpose: str) -> dict[str, str]:
    # One hash tag per user: the scripts touch these keys together.
    return {name: keys.tagged(FEATURE, user, purpose, name) for name in ("code", "cool", "sends", "fails")}


def _doc_id(user: str, purpose: str) -> str:
    return f"{purpose}|{user}"  # '|' is allowed in neither part, so the id is unambiguous


def _at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def _now_ms() -> int:
    return int(clock.time() * 1000)


def _seconds(ms: float) -> int:
    return max(1, math.ceil(ms / 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _collection() -> mongo.Collection:
    return mongo.ensure_indexes(
        COLLECTION,
        feature=FEATURE,
        create=lambda c: c.create_index([("purge_at", mongo.ASCENDING)], expire_after_seconds=0, name="purge_at"),
    )


def _settings() -> dict[str, int]:
    s = hotcache_settings
    return {
        "ttl_ms": int(s.MFA_CODE_TTL) * 1000,
        "digits": int(s.MFA_DIGITS),
        "max_attempts": int(s.MFA_MAX_ATTEMPTS),
        "fail_limit": int(s.MFA_USER_FAILURE_LIMIT),
        "window_ms": int(s.MFA_USER_FAILURE_WINDOW) * 1000,
        "cooldown_ms": int(s.MFA_RESEND_COOLDOWN) * 1000,
        "cap": int(s.MFA_HOURLY_SEND_CAP),
    }


# --- issue ---------------------------------------------------------------------------------------


def issue(user_id: str | int, purpose: str = "login") -> str:
    """A new code for ``user_id`` and ``purpose`` (replacing any earlier one), for the caller to deliver.

    Raises ResendTooSoon inside the resend cooldown or over the hourly cap, MfaUnavailable when
    neither store answers, InvalidName for a bad user_id or purpose.
    """
    user, purpose = _validate(user_id, purpose)
    conf = _settings()
    code = f"{secrets.randbelow(10 ** conf['digits']):0{conf['digits']}d}"
    digest = _digest(user, purpose, code)
    now_ms = _now_ms()
    k = _redis_keys(user, purpose)
    try:
        out = redis_backend.call(
            FEATURE,
            lambda r: _ISSUE(
                r,
                [k["code"], k["cool"], k["sends"]],
                [digest, now_ms, conf["ttl_ms"], conf["cooldown_ms"], conf["cap"], _HOUR_MS],
            ),
        )
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        try:
            _issue_on_mongo(user, purpose, digest, now_ms, conf)
        except (MongoUnavailable, MongoWriteError) as exc:
            metering.event(FEATURE, "unavailable")
            log.warning("hotcache: mfa issue failed: Redis and MongoDB are both unavailable (%s)", exc)
            msg = "cannot issue an MFA code: Redis and MongoDB are both unavailable"
            raise MfaUnavailable(msg) from exc
    else:
        if int(out[0]) != 1:
            metering.event(FEATURE, "resend_blocked")
            raise ResendTooSoon(_seconds(int(out[1])), _text(out[2]))
    metering.event(FEATURE, "issued")
    return code


def _issue_on_mongo(user: str, purpose: str, digest: str, now_ms: int, conf: dict[str, int]) -> None:
    coll = _collection()
    now = _at(now_ms)
    doc_id = _doc_id(user, purpose)
    code_fields = {
        "d": digest,
        "st": "live",
        "a": 0,
        "issued_at": now,
        "expires_at": _at(now_ms + conf["ttl_ms"]),
        "last_sent_at": now,
    }
    cooldown_over = {
        "$or": [{"last_sent_at": {"$lte": _at(now_ms - conf["cooldown_ms"])}}, {"last_sent_at": {"$exists": False}}]
    }
    keep_until = _at(now_ms + max(conf["ttl_ms"], conf["cooldown_ms"]))
    # Inside the current hour window and under the cap: count the send, replace the code.
    done = coll.find_one_and_update(
        {"_id": doc_id, "$and": [cooldown_over, {"sends_reset_at": {"$gt": now}}, {"sends": {"$lt": conf["cap"]}}]},
        {"$set": code_fields, "$inc": {"sends": 1}, "$max": {"purge_at": keep_until}},
    )
    if done is not None:
        return
    # First send, or the hour window is over: start a new window. The upsert inserts only when no
    # document exists; an existing one that fails the filter makes it hit the unique _id (refused).
    window_over = {"$or": [{"sends_reset_at": {"$lte": now}}, {"sends_reset_at": {"$exists": False}}]}
    try:
        done = coll.find_one_and_update(
            {"_id": doc_id, "$and": [cooldown_over, window_over]},
            {
                "$set": {**code_fields, "sends": 1, "sends_reset_at": _at(now_ms + _HOUR_MS)},
                "$max": {"purge_at": _at(now_ms + max(conf["ttl_ms"], conf["cooldown_ms"], _HOUR_MS))},
            },
            upsert=True,
        )
    except DuplicateKey:
        done = None
    if done is not None:
        return
    metering.event(FEATURE, "resend_blocked")
    doc = coll.find_one({"_id": doc_id}) or {}
    last = doc.get("last_sent_at")
    if last is not None and last + dt.timedelta(milliseconds=conf["cooldown_ms"]) > now:
        left = (last + dt.timedelta(milliseconds=conf["cooldown_ms"]) - now).total_seconds() * 1000
        raise ResendTooSoon(_seconds(left), "cooldown")
    reset_at = doc.get("sends_reset_at")
    if reset_at is not None and reset_at > now:
        raise ResendTooSoon(_seconds((reset_at - now).total_seconds() * 1000), "hourly_cap")
    # The document changed between the two updates (a concurrent issue): treat it as the cooldown.
    raise ResendTooSoon(_seconds(conf["cooldown_ms"]), "cooldown")


# --- verify --------------------------------------------------------------------------------------

_REDIS_REASONS = {
    "missing": Reason.EXPIRED_OR_MISSING,
    "used": Reason.EXPIRED_OR_MISSING,
    "burned": Reason.TOO_MANY_ATTEMPTS,
    "burned_now": Reason.TOO_MANY_ATTEMPTS,
    "invalid": Reason.INVALID,
}


def verify(user_id: str | int, code: str, purpose: str = "login") -> VerifyResult:
    """Check ``code`` for ``user_id`` and ``purpose``, consuming it on success (one success per code, ever).

    Expected outcomes are results, never raises (except InvalidName for a bad user_id or purpose).
    """
    user, purpose = _validate(user_id, purpose)
    conf = _settings()
    if not isinstance(code, str):
        return _record(VerifyResult(False, Reason.INVALID))
    code = "".join(code.split())  # "123 456" as typed from an SMS
    if not re.fullmatch(rf"[0-9]{{{conf['digits']}}}", code):
        return _record(VerifyResult(False, Reason.INVALID))  # cannot be a code: no store is touched
    digest = _digest(user, purpose, code)
    k = _redis_keys(user, purpose)
    try:
        out = redis_backend.call(
            FEATURE,
            lambda r: _VERIFY(
                r,
                [k["code"], k["fails"]],
                [digest, conf["max_attempts"], conf["fail_limit"], conf["window_ms"]],
            ),
        )
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        try:
            result = _verify_on_mongo(user, purpose, digest, conf, newer_than_ms=None)
        except (MongoUnavailable, MongoWriteError) as exc:
            log.warning("hotcache: mfa verify failed closed: Redis and MongoDB are both unavailable (%s)", exc)
            result = VerifyResult(False, Reason.UNAVAILABLE)
        assert result is not None
        return _record(result)

    status, iat, n = _text(out[0]), _text(out[1]), int(out[2])
    if status == "ok":
        return _record(VerifyResult(True, Reason.OK, store="redis"))
    if status == "capped":
        return _record(VerifyResult(False, Reason.TOO_MANY_ATTEMPTS, retry_after=_seconds(n), store="redis"))
    redis_result = VerifyResult(
        False,
        _REDIS_REASONS[status],
        attempts_left=n if status == "invalid" else None,
        store="redis",
        burned=status == "burned_now",
    )
    # Redis holds no usable code for this guess: a newer code may have been issued on MongoDB
    # during an outage (see the module docstring).
    try:
        newer = _verify_on_mongo(user, purpose, digest, conf, newer_than_ms=int(iat) if iat else 0)
    except (MongoUnavailable, MongoWriteError) as exc:
        log.warning("hotcache: mfa could not check MongoDB for a code issued during an outage: %s", exc)
        newer = None
    if newer is None:
        return _record(redis_result)
    if newer.ok and status in ("invalid", "burned_now"):
        # The Redis code predates the one just used: it was superseded, so it must not succeed later.
        try:
            redis_backend.call(FEATURE, lambda r: r.delete(k["code"]))
        except RedisUnavailable:
            log.warning("hotcache: mfa could not delete a superseded Redis code for purpose %s", purpose)
    return _record(newer)


def _verify_on_mongo(
    user: str, purpose: str, digest: str, conf: dict[str, int], *, newer_than_ms: int | None
) -> VerifyResult | None:
    """Verify against MongoDB. ``newer_than_ms`` set: Redis answered, only a newer live code counts (else None)."""
    coll = _collection()
    now_ms = _now_ms()
    now = _at(now_ms)
    doc_id = _doc_id(user, purpose)
    live: dict[str, Any] = {
        "_id": doc_id,
        "st": "live",
        "expires_at": {"$gt": now},  # the TTL index is only garbage collection
        "a": {"$lt": conf["max_attempts"]},
    }
    if newer_than_ms is not None:
        # Redis answered: only a code issued after the Redis record counts. Normally MongoDB holds
        # none, so this one read is all a Redis miss or wrong guess costs.
        newer = {"_id": doc_id, "issued_at": {"$gt": _at(newer_than_ms)}, "expires_at": {"$gt": now}}
        if coll.find_one(newer, {"_id": 1}) is None:
            return None
        live["issued_at"] = newer["issued_at"]
    uncapped = {"$or": [{"fails": {"$lt": conf["fail_limit"]}}, {"fails_reset_at": {"$lte": now}}, {"fails": None}]}
    # Count the attempt and read the digest in one atomic step.
    doc = coll.find_one_and_update({**live, **uncapped}, {"$inc": {"a": 1}}, return_new=True)
    if doc is None:
        return _mongo_refusal(coll.find_one({"_id": doc_id}), now, conf)
    if hmac.compare_digest(str(doc.get("d", "")), digest):
        # Consume: only one caller can move this exact code from live to used.
        won = coll.find_one_and_update(
            {"_id": doc_id, "st": "live", "d": digest, "issued_at": doc["issued_at"]},
            {"$set": {"st": "used"}, "$unset": {"d": ""}},
        )
        if won is not None:
            return VerifyResult(True, Reason.OK, store="mongodb")
        return VerifyResult(False, Reason.EXPIRED_OR_MISSING, store="mongodb")
    _count_mongo_failure(coll, doc, now_ms, conf)
    left = conf["max_attempts"] - int(doc["a"])
    if left <= 0:
        coll.update_one(
            {"_id": doc_id, "st": "live", "issued_at": doc["issued_at"]},
            {"$set": {"st": "burned"}, "$unset": {"d": ""}},
        )
        return VerifyResult(False, Reason.TOO_MANY_ATTEMPTS, store="mongodb", burned=True)
    return VerifyResult(False, Reason.INVALID, attempts_left=left, store="mongodb")


def _count_mongo_failure(coll: mongo.Collection, doc: dict, now_ms: int, conf: dict[str, int]) -> None:
    now = _at(now_ms)
    reset_at = doc.get("fails_reset_at")
    if reset_at is not None and reset_at > now:
        coll.update_one({"_id": doc["_id"]}, {"$inc": {"fails": 1}})
        return
    # Start a new window, unless another failure just did (then count into that one).
    started = coll.update_one(
        {"_id": doc["_id"], "fails_reset_at": reset_at},
        {
            "$set": {"fails": 1, "fails_reset_at": _at(now_ms + conf["window_ms"])},
            "$max": {"purge_at": _at(now_ms + conf["window_ms"])},
        },
    )
    if not started:
        coll.update_one({"_id": doc["_id"]}, {"$inc": {"fails": 1}})


def _mongo_refusal(doc: dict | None, now: dt.datetime, conf: dict[str, int]) -> VerifyResult:
    """Why the MongoDB fallback found no usable code (Redis is down, so MongoDB's answer is the answer)."""
    if doc is None:
        return VerifyResult(False, Reason.EXPIRED_OR_MISSING, store="mongodb")
    reset_at = doc.get("fails_reset_at")
    if int(doc.get("fails") or 0) >= conf["fail_limit"] and reset_at is not None and reset_at > now:
        retry = _seconds((reset_at - now).total_seconds() * 1000)
        return VerifyResult(False, Reason.TOO_MANY_ATTEMPTS, retry_after=retry, store="mongodb")
    expires_at = doc.get("expires_at")
    if expires_at is None or expires_at <= now or doc.get("st") == "used":
        return VerifyResult(False, Reason.EXPIRED_OR_MISSING, store="mongodb")
    return VerifyResult(False, Reason.TOO_MANY_ATTEMPTS, store="mongodb")


_EVENTS = {
    Reason.OK: "verified",
    Reason.INVALID: "failed",
    Reason.EXPIRED_OR_MISSING: "expired",
    Reason.TOO_MANY_ATTEMPTS: "failed",
    Reason.UNAVAILABLE: "unavailable",
}


def _record(result: VerifyResult) -> VerifyResult:
    if result.burned:
        metering.event(FEATURE, "burned")
    metering.event(FEATURE, _EVENTS[result.reason])
    return result
