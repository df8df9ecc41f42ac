"""The MongoDB path (collection ``mfa_codes``, one document per user and purpose): the same rules as Redis.

find_one_and_update counts the attempt and returns the digest, compare_digest decides, and a second
find_one_and_update conditioned on the same digest and issue time consumes it (one caller wins). A TTL
index on ``purge_at`` only collects garbage: every read filters on ``expires_at``. See docs/mfa.md.
"""

from __future__ import annotations

import datetime as dt
import hmac
from typing import Any

from hotcache import metering
from hotcache.backends import mongo
from hotcache.exceptions import DuplicateKey
from hotcache.mfa._codes import doc_id
from hotcache.mfa._conf import COLLECTION, FEATURE, HOUR_MS, Limits, now_ms, seconds
from hotcache.mfa._results import Reason, ResendTooSoon, VerifyResult

__all__ = ["collection", "issue", "verify"]


def collection() -> mongo.Collection:
    """``mfa_codes``, its TTL index created once per process."""
    return mongo.ensure_indexes(
        COLLECTION,
        feature=FEATURE,
        create=lambda c: c.create_index([("purge_at", mongo.ASCENDING)], expire_after_seconds=0, name="purge_at"),
    )


def _at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def issue(user: str, purpose: str, code_digest: str, now_ms: int, conf: Limits) -> None:
    """Store the code (replacing any earlier one); ResendTooSoon inside the cooldown or over the hourly cap.

    Raises MongoUnavailable / MongoWriteError when MongoDB does not answer.
    """
    coll = collection()
    now = _at(now_ms)
    _id = doc_id(user, purpose)
    code_fields = {
        "d": code_digest,
        "st": "live",
        "a": 0,
        "issued_at": now,
        "expires_at": _at(now_ms + conf.ttl_ms),
        "last_sent_at": now,
    }
    cooldown_over = {
        "$or": [{"last_sent_at": {"$lte": _at(now_ms - conf.cooldown_ms)}}, {"last_sent_at": {"$exists": False}}]
    }
    keep_until = _at(now_ms + max(conf.ttl_ms, conf.cooldown_ms))
    # Inside the current hour window and under the cap: count the send, replace the code.
    done = coll.find_one_and_update(
        {"_id": _id, "$and": [cooldown_over, {"sends_reset_at": {"$gt": now}}, {"sends": {"$lt": conf.cap}}]},
        {"$set": code_fields, "$inc": {"sends": 1}, "$max": {"purge_at": keep_until}},
    )
    if done is not None:
        return
    # First send, or the hour window is over: start a new window. The upsert inserts only when no
    # document exists; an existing one that fails the filter makes it hit the unique _id (refused).
    window_over = {"$or": [{"sends_reset_at": {"$lte": now}}, {"sends_reset_at": {"$exists": False}}]}
    try:
        done = coll.find_one_and_update(
            {"_id": _id, "$and": [cooldown_over, window_over]},
            {
                "$set": {**code_fields, "sends": 1, "sends_reset_at": _at(now_ms + HOUR_MS)},
                "$max": {"purge_at": _at(now_ms + max(conf.ttl_ms, conf.cooldown_ms, HOUR_MS))},
            },
            upsert=True,
        )
    except DuplicateKey:
        done = None
    if done is not None:
        return
    metering.event(FEATURE, "resend_blocked")
    doc = coll.find_one({"_id": _id}) or {}
    last = doc.get("last_sent_at")
    if last is not None and last + dt.timedelta(milliseconds=conf.cooldown_ms) > now:
        left = (last + dt.timedelta(milliseconds=conf.cooldown_ms) - now).total_seconds() * 1000
        raise ResendTooSoon(seconds(left), "cooldown")
    reset_at = doc.get("sends_reset_at")
    if reset_at is not None and reset_at > now:
        raise ResendTooSoon(seconds((reset_at - now).total_seconds() * 1000), "hourly_cap")
    # The document changed between the two updates (a concurrent issue): treat it as the cooldown.
    raise ResendTooSoon(seconds(conf.cooldown_ms), "cooldown")


def verify(
    user: str, purpose: str, code_digest: str, conf: Limits, *, newer_than_ms: int | None
) -> VerifyResult | None:
    """Verify against MongoDB. ``newer_than_ms`` set: Redis answered, only a newer live code counts (else None).

    Raises MongoUnavailable / MongoWriteError when MongoDB does not answer.
    """
    coll = collection()
    now_at_ms = now_ms()
    now = _at(now_at_ms)
    _id = doc_id(user, purpose)
    live: dict[str, Any] = {
        "_id": _id,
        "st": "live",
        "expires_at": {"$gt": now},  # the TTL index is only garbage collection
        "a": {"$lt": conf.max_attempts},
    }
    if newer_than_ms is not None:
        # Redis answered: only a code issued after the Redis record counts. Normally MongoDB holds
        # none, so this one read is all a Redis miss or wrong guess costs.
        newer = {"_id": _id, "issued_at": {"$gt": _at(newer_than_ms)}, "expires_at": {"$gt": now}}
        if coll.find_one(newer, {"_id": 1}) is None:
            return None
        live["issued_at"] = newer["issued_at"]
    uncapped = {"$or": [{"fails": {"$lt": conf.fail_limit}}, {"fails_reset_at": {"$lte": now}}, {"fails": None}]}
    # Count the attempt and read the digest in one atomic step.
    doc = coll.find_one_and_update({**live, **uncapped}, {"$inc": {"a": 1}}, return_new=True)
    if doc is None:
        return _refusal(coll.find_one({"_id": _id}), now, conf)
    if hmac.compare_digest(str(doc.get("d", "")), code_digest):
        # Consume: only one caller can move this exact code from live to used.
        won = coll.find_one_and_update(
            {"_id": _id, "st": "live", "d": code_digest, "issued_at": doc["issued_at"]},
            {"$set": {"st": "used"}, "$unset": {"d": ""}},
        )
        if won is not None:
            return VerifyResult(True, Reason.OK, store="mongodb")
        return VerifyResult(False, Reason.EXPIRED_OR_MISSING, store="mongodb")
    _count_failure(coll, doc, now_at_ms, conf)
    left = conf.max_attempts - int(doc["a"])
    if left <= 0:
        coll.update_one(
            {"_id": _id, "st": "live", "issued_at": doc["issued_at"]},
            {"$set": {"st": "burned"}, "$unset": {"d": ""}},
        )
        return VerifyResult(False, Reason.TOO_MANY_ATTEMPTS, store="mongodb", burned=True)
    return VerifyResult(False, Reason.INVALID, attempts_left=left, store="mongodb")


def _count_failure(coll: mongo.Collection, doc: dict[str, Any], now_ms: int, conf: Limits) -> None:
    now = _at(now_ms)
    reset_at = doc.get("fails_reset_at")
    if reset_at is not None and reset_at > now:
        coll.update_one({"_id": doc["_id"]}, {"$inc": {"fails": 1}})
        return
    # Start a new window, unless another failure just did (then count into that one).
    started = coll.update_one(
        {"_id": doc["_id"], "fails_reset_at": reset_at},
        {
            "$set": {"fails": 1, "fails_reset_at": _at(now_ms + conf.window_ms)},
            "$max": {"purge_at": _at(now_ms + conf.window_ms)},
        },
    )
    if not started:
        coll.update_one({"_id": doc["_id"]}, {"$inc": {"fails": 1}})


def _refusal(doc: dict[str, Any] | None, now: dt.datetime, conf: Limits) -> VerifyResult:
    """Why the MongoDB fallback found no usable code (Redis is down, so MongoDB's answer is the answer)."""
    if doc is None:
        return VerifyResult(False, Reason.EXPIRED_OR_MISSING, store="mongodb")
    reset_at = doc.get("fails_reset_at")
    if int(doc.get("fails") or 0) >= conf.fail_limit and reset_at is not None and reset_at > now:
        retry = seconds((reset_at - now).total_seconds() * 1000)
        return VerifyResult(False, Reason.TOO_MANY_ATTEMPTS, retry_after=retry, store="mongodb")
    expires_at = doc.get("expires_at")
    if expires_at is None or expires_at <= now or doc.get("st") == "used":
        return VerifyResult(False, Reason.EXPIRED_OR_MISSING, store="mongodb")
    return VerifyResult(False, Reason.TOO_MANY_ATTEMPTS, store="mongodb")
