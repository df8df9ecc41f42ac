"""Reading keys and their use: get(), list_keys(), usage(), usage_many().

A day's use is MongoDB's own count plus Redis's, where Redis's is the larger of the live counter and the
sync's copy, less the uses taken back from it. See docs/apikeys.md ("Usage history").
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hotcache import clock, signing
from hotcache.apikeys._documents import keys_coll, synced_redis_count, usage_coll
from hotcache.apikeys._index import Entry, replies
from hotcache.apikeys._inputs import days_window, key_id_or_none, not_found, owner_text
from hotcache.apikeys._records import base_key, count, count_key, day_name, tag_of, undo_key, use_key
from hotcache.apikeys._results import FEATURE, KeyInfo
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.exceptions import RedisUnavailable

__all__ = ["counter_keys", "get", "list_keys", "live_count", "read_counters", "usage", "usage_many"]

_CHUNK = 2000  # MGETs per pipeline


def get(key_id: str) -> KeyInfo | None:
    wanted = key_id_or_none(key_id)
    if wanted is None:
        return None
    docs = keys_coll().find({"key_id": wanted}, limit=1)
    if not docs:
        return None
    return _with_usage(docs)[0]


def list_keys(owner: str | int | None = None, limit: int | None = None) -> list[KeyInfo]:
    """Keys of ``owner`` (all keys when None), newest first, with today's use; at most ``limit`` when given.

    Cost: 2 MongoDB queries and 1 Redis round trip of one MGET (of 4 keys) per listed key (``limit`` bounds it).
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        msg = f"limit must be a positive whole number or None, not {limit!r}"
        raise ValueError(msg)
    query = {} if owner is None else {"owner": owner_text(owner)}
    docs = keys_coll().find(query, sort=[("created_at", mongo.DESCENDING)], limit=limit or 0)
    return _with_usage(docs)


def usage(key_id: str, days: int = 30) -> list[tuple[dt.date, int]]:
    """Uses per UTC day for the last ``days`` days, newest first (MongoDB history merged with live Redis counters)."""
    days_window(days)
    wanted = key_id_or_none(key_id)
    doc = keys_coll().find_one({"key_id": wanted}, projection={"key_id": 1, "key_sha256": 1}) if wanted else None
    if doc is None:
        raise not_found(key_id)
    day_list = _days_back(days)
    totals = _totals([(doc["key_id"], tag_of(doc["key_sha256"]))], day_list)
    return [(d, totals[(doc["key_id"], d)]) for d in day_list]


def usage_many(key_ids: list[str], days: int = 30) -> dict[str, list[tuple[dt.date, int]]]:
    """usage() for several keys at once: {key_id: [(day, uses), ...] newest first}; unknown ids are left out.

    Cost whatever the number of keys: 2 MongoDB queries and 1 Redis round trip of ``len(key_ids) x days``
    MGETs (usage() per key would be 2 queries and 1 round trip each).
    """
    days_window(days)
    ids = [k for k in map(key_id_or_none, key_ids) if k is not None]
    if not ids:
        return {}
    docs = keys_coll().find({"key_id": {"$in": ids}}, projection={"key_id": 1, "key_sha256": 1})
    if not docs:
        return {}
    day_list = _days_back(days)
    totals = _totals([(d["key_id"], tag_of(d["key_sha256"])) for d in docs], day_list)
    return {d["key_id"]: [(day, totals[(d["key_id"], day)]) for day in day_list] for d in docs}


def _days_back(days: int) -> list[dt.date]:
    today = clock.utcnow().date()
    return [today - dt.timedelta(days=i) for i in range(days)]


def _with_usage(docs: list[dict[str, Any]]) -> list[KeyInfo]:
    if not docs:
        return []
    today = clock.utcnow().date()
    totals = _totals([(d["key_id"], tag_of(d["key_sha256"])) for d in docs], [today])
    return [_info(d, totals.get((d["key_id"], today), 0)) for d in docs]


def _info(doc: dict[str, Any], used_today: int) -> KeyInfo:
    return KeyInfo(
        key_id=doc["key_id"],
        prefix=doc["prefix"],
        owner=doc["owner"],
        name=doc.get("name", ""),
        daily_limit=doc.get("daily_limit"),
        created_at=doc["created_at"],
        expires_at=doc.get("expires_at"),
        revoked_at=doc.get("revoked_at"),
        used_today=used_today,
    )


def live_count(tag: str, day: dt.date, reply: Any) -> tuple[int, int] | None:
    """(this Redis's uses + uses taken back, uses taken back) from an ``MGET n base use undo`` reply (see
    read_counters); None when the day's count is not a count (counted as tampered: absent). This Redis's uses
    are the count less the base it includes, plus the previous layout's counter (not yet folded, or written
    by a process still running the previous version). Any other value that is not a count is counted as
    tampered and read as 0."""
    if not (isinstance(reply, list) and len(reply) == 4):
        signing.tampered(FEATURE, count_key(tag, day), "is not a count")
        return None
    total, base, old, undo = (count(v) for v in reply)
    if total is None:
        signing.tampered(FEATURE, count_key(tag, day), "is not a count")
        return None
    for key, value in ((base_key(tag, day), base), (use_key(tag, day), old), (undo_key(tag, day), undo)):
        if value is None:
            signing.tampered(FEATURE, key, "is not a count")
    base, old, undo = base or 0, old or 0, undo or 0
    uses = (max(0, total - base) if reply[0] is not None else 0) + old
    return uses + undo, undo


def counter_keys(tag: str, day: dt.date) -> list[str]:
    """The keys live_count() reads, in its order (one MGET: they share the key's hash slot)."""
    return [count_key(tag, day), base_key(tag, day), use_key(tag, day), undo_key(tag, day)]


def read_counters(r: Any, pairs: list[Entry]) -> list[Any]:
    """One ``MGET`` of a (key, day)'s counters (counter_keys) per (key, day), 2,000 to a round trip (read them
    with live_count)."""
    values: list[Any] = []
    for i in range(0, len(pairs), _CHUNK):
        pipe = r.pipeline(transaction=False)
        for _, tag, day in pairs[i : i + _CHUNK]:
            pipe.execute_command("MGET", *counter_keys(tag, day))  # cluster pipelines block .mget()
        values += replies(pipe)
    return values


def _totals(key_tags: list[tuple[str, str]], days: list[dt.date]) -> dict[tuple[str, dt.date], int]:
    """Use per (key_id, day): MongoDB's fallback count plus Redis's (live or synced, the larger), less what was
    taken back from it."""
    ids = [k for k, _ in key_tags]
    docs = usage_coll().find(
        {"key_id": {"$in": ids}, "day": {"$in": [day_name(d) for d in days]}},
        projection={"key_id": 1, "day": 1, "fallback": 1, "redis": 1, "undone": 1},
    )
    stored = {(d["key_id"], dt.date.fromisoformat(d["day"])): d for d in docs}
    live: dict[tuple[str, dt.date], tuple[int, int]] = {}

    def read(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for _, tag in key_tags:
            for day in days:
                pipe.execute_command("MGET", *counter_keys(tag, day))  # cluster pipelines block .mget()
        return replies(pipe)

    try:
        values = iter(redis_backend.call(FEATURE, read))
        for key_id, tag in key_tags:
            for day in days:
                counted = live_count(tag, day, next(values))
                if counted is not None:  # not a count (or not a string): absent, MongoDB's copy stands
                    live[(key_id, day)] = counted
    except RedisUnavailable:
        pass
    out: dict[tuple[str, dt.date], int] = {}
    for key_id, _ in key_tags:
        for day in days:
            doc = stored.get((key_id, day))
            copied, undone = synced_redis_count(doc)
            gross, undo = live.get((key_id, day), (0, 0))
            redis_count = max(copied, gross) - max(undone, undo)
            out[(key_id, day)] = int((doc or {}).get("fallback", 0) or 0) + max(0, redis_count)
    return out
