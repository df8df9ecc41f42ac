"""The MongoDB documents of API keys: key records (``api_keys``) and per-key, per-UTC-day usage (``api_key_usage``).

A usage document holds ``fallback`` (uses counted on MongoDB), ``redis`` (the largest copy the sync took of
Redis's counter plus the uses taken back from it), ``undone`` (the largest copy of those taken back) and
``doubt`` (uses reserved for checks in doubt). See docs/apikeys.md ("Usage history").
"""

from __future__ import annotations

import datetime as dt
import hmac
from typing import Any

from hotcache import clock
from hotcache.apikeys._records import day_name, sealed_record, tag_of, tombstone, unknown
from hotcache.apikeys._results import invalid
from hotcache.backends import mongo
from hotcache.exceptions import DuplicateKey

__all__ = [
    "KEYS_COLLECTION",
    "USAGE_COLLECTION",
    "add_use",
    "keys_coll",
    "load_record",
    "usage_coll",
    "used",
    "valid_record",
]

FEATURE = "apikeys"
KEYS_COLLECTION = "api_keys"
USAGE_COLLECTION = "api_key_usage"
_COUNTED = ("fallback", "redis", "doubt")  # fields a total adds up; "undone" is subtracted from them


def _create_key_indexes(coll: mongo.Collection) -> None:
    coll.create_index([("key_sha256", mongo.ASCENDING)], unique=True, name="key_sha256_unique")
    coll.create_index([("owner", mongo.ASCENDING)], name="owner")
    # sync_usage() re-sends tombstones for keys revoked in its window: a range query on this index.
    coll.create_index([("revoked_at", mongo.ASCENDING)], name="revoked_at")


def _create_usage_indexes(coll: mongo.Collection) -> None:
    coll.create_index([("key_id", mongo.ASCENDING), ("day", mongo.ASCENDING)], unique=True, name="key_day")
    coll.create_index([("day", mongo.ASCENDING)], name="day")


def keys_coll() -> mongo.Collection:
    return mongo.ensure_indexes(KEYS_COLLECTION, feature=FEATURE, create=_create_key_indexes)


def usage_coll() -> mongo.Collection:
    return mongo.ensure_indexes(USAGE_COLLECTION, feature=FEATURE, create=_create_usage_indexes)


def _field(doc: dict[str, Any] | None, name: str) -> int:
    return int((doc or {}).get(name, 0) or 0)


def used(doc: dict[str, Any] | None) -> int:
    """The day's use as MongoDB knows it, for the limit: its own count, Redis's as of the last sync, doubts held."""
    return sum(_field(doc, f) for f in _COUNTED) - _field(doc, "undone")


def synced_redis_count(doc: dict[str, Any] | None) -> tuple[int, int]:
    """(Redis's counter plus the uses taken back, the uses taken back), as the sync last copied them."""
    return _field(doc, "redis"), _field(doc, "undone")


def _known_total() -> dict[str, Any]:
    """used() as a MongoDB expression, for conditional updates."""
    added = {"$add": [{"$ifNull": [f"${f}", 0]} for f in _COUNTED]}
    return {"$subtract": [added, {"$ifNull": ["$undone", 0]}]}


def add_use(key_id: str, day: dt.date, field: str, limit: int | None, now: dt.datetime) -> tuple[bool, int]:
    """Add one to the day's ``field`` ("fallback": a use counted on MongoDB; "doubt": a reservation) if the
    day's total stays within ``limit`` (always when None), creating the document when it is missing.

    Returns (added, the day's use after it). One conditional ``$inc``; with a limit, a missing document or a
    used-up limit costs a create-if-missing and, if that shows room, one more try (3 operations at most).
    """
    coll = usage_coll()
    where = {"key_id": key_id, "day": day_name(day)}
    inc = {"$inc": {field: 1}, "$set": {"updated_at": now}}
    missing = {f: 0 for f in ("fallback", "redis") if f != field}
    if limit is None:
        try:
            after = coll.find_one_and_update(where, {**inc, "$setOnInsert": missing}, upsert=True)
        except DuplicateKey:  # two first uses of the day raced to insert; the document exists now
            after = coll.find_one_and_update(where, inc)
        return True, used(after)
    under = {**where, "$expr": {"$lt": [_known_total(), limit]}}
    after = coll.find_one_and_update(under, inc)
    if after is None:
        # No document for today yet, or the limit is used up: create it if missing, then try once more.
        try:
            current = coll.find_one_and_update(where, {"$setOnInsert": {"fallback": 0, "redis": 0}}, upsert=True)
        except DuplicateKey:  # a concurrent upsert created it first
            current = coll.find_one(where)
        if used(current) < limit:
            after = coll.find_one_and_update(under, inc)
        if after is None:
            return False, used(current)
    return True, used(after)


def valid_record(digest: str, prefix: str, now: dt.datetime) -> dict[str, Any]:
    """The key's record by its indexed digest (one query); InvalidKey if unknown, revoked or expired."""
    doc = keys_coll().find_one({"key_sha256": digest})
    if doc is None or not hmac.compare_digest(doc["key_sha256"], digest):
        raise invalid("unknown", prefix)
    if doc.get("revoked_at") is not None:
        raise invalid("revoked", prefix)
    expires = doc.get("expires_at")
    if expires is not None and now >= expires:
        raise invalid("expired", prefix)
    return doc


def load_record(digest: str, redis_now: float | None = None) -> str:
    """The value to cache for this digest, signed: the record, or the tombstone / 'unknown' (one indexed query).

    ``redis_now``: Redis's clock as the last script reply gave it (the record's "u" is on that clock).
    """
    tag = tag_of(digest)
    # Shared: the threads of a process missing one key at once (a cold start) send one query. A raw key is
    # known only once create() returned, so no load of its digest can have begun before its record existed.
    doc = keys_coll().find_one({"key_sha256": digest}, shared=True)
    if doc is None or not hmac.compare_digest(doc["key_sha256"], digest):
        return unknown(tag)
    if doc.get("revoked_at") is not None:
        return tombstone(tag)
    return sealed_record(doc, tag, clock.time() if redis_now is None else redis_now)
