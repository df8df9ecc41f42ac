"""The MongoDB path (workbench_active) while Redis is unreachable: save, load and end with the same versions,
conflicts and owner rule; tombstones for sessions Redis may still hold. See docs/workbench.md#redis-down.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import Any

from hotcache import clock, metering
from hotcache.backends import mongo
from hotcache.exceptions import (
    DuplicateKey,
    MongoUnavailable,
)
from hotcache.workbench._archive import _copy_record, _write_history
from hotcache.workbench._durable import _flush_before_fallback
from hotcache.workbench._envelope import _ts
from hotcache.workbench._fence import _raise_fence_later
from hotcache.workbench._layout import _FALLBACK, _LIVE, FEATURE, _active
from hotcache.workbench._results import Conflict, OwnerConflict, Session
from hotcache.workbench._state import _ANY, _owner_refused

log = logging.getLogger("hotcache.workbench")


def _mongo_doc_session(doc: Mapping[str, Any]) -> Session:
    return Session(
        session_id=doc["_id"],
        state=json.loads(doc["state"]),
        version=int(doc["version"]),
        owner=doc.get("owner"),
        created_at=_ts(doc["created_at"]),
        updated_at=_ts(doc["updated_at"]),
    )


def _fresh_doc(
    session_id: str,
    text: str,
    owner: str | None,
    now: dt.datetime,
    tomb: Mapping[str, Any] | None,
    token: str,
    in_redis: bool,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": session_id,
        "version": 1,
        "token": token,
        "owner": owner,
        "created_at": now,
        "state": text,
        "updated_at": now,
        "last_seen": now,
        "origin": _FALLBACK,
    }
    if tomb is not None:
        # Keep what the tombstone says: Redis may still hold the ended incarnation (dropped on reconcile).
        doc["gone_token"], doc["gone_version"] = tomb["token"], int(tomb["version"])
    if in_redis:
        # Redis may have run this very creation (its reply was lost): it may hold this incarnation (same
        # token), so an end() on MongoDB leaves a tombstone that drops Redis's copy when it returns.
        doc["from_redis"] = True
    return doc


def _replace_tombstone(
    coll: mongo.Collection, session_id: str, text: str, owner: str | None, token: str, in_redis: bool
) -> int | None:
    """Start a new incarnation over a tombstone; 1 on success, None if the document is not a tombstone."""
    tomb = coll.find_one({"_id": session_id})
    if tomb is None or not tomb.get("ended"):
        return None
    doc = _fresh_doc(session_id, text, owner, clock.utcnow(), tomb, token, in_redis)
    fields = {k: v for k, v in doc.items() if k != "_id"}
    update = {"$set": fields, "$unset": {"ended": ""} if in_redis else {"ended": "", "from_redis": ""}}
    matched = coll.update_one({"_id": session_id, "ended": True, "token": tomb["token"]}, update)
    return 1 if matched else None


def _create(
    coll: mongo.Collection, session_id: str, text: str, owner: str | None, now: dt.datetime, token: str, in_redis: bool
) -> bool:
    """Create the session at version 1 on workbench_active: a new document, or a new incarnation over a tombstone
    (the fence goes up either way); False when the id holds a live session (the caller decides what that means)."""
    try:
        coll.insert_one(_fresh_doc(session_id, text, owner, now, None, token, in_redis))
    except DuplicateKey:
        if not _replace_tombstone(coll, session_id, text, owner, token, in_redis):
            return False
    _raise_fence_later()
    return True


def _mongo_save(
    session_id: str,
    text: str,
    owner: str | None,
    expected: int | None,
    expected_owner: Any,
    token: str,
    *,
    in_redis: bool = False,
) -> int:
    """The save on workbench_active (Redis unreachable), with the same versions, Conflicts and owner rule.

    ``token``: the incarnation token a creation uses, the one the Redis attempt sent; ``in_redis``: that
    attempt may have been applied (its reply was lost). The owner rule is part of each update's filter, so
    the check and the write are one atomic operation, as the compare-and-set is on Redis.
    """
    _flush_before_fallback()
    coll = _active()
    now = clock.utcnow()
    # Written while Redis is unreachable: Redis may hold an older copy when it returns (see "recovery").
    fields: dict[str, Any] = {"state": text, "updated_at": now, "last_seen": now, "origin": _FALLBACK}
    if expected == 0:
        if _create(coll, session_id, text, owner, now, token, in_redis):
            return 1
        current = coll.find_one({"_id": session_id, **_LIVE}, {"version": 1})
        metering.event(FEATURE, "conflict")
        raise Conflict(session_id, 0, int(current["version"]) if current else 0)
    if owner is not None:
        fields["owner"] = owner
    update: dict[str, Any] = {"$set": fields, "$inc": {"version": 1}}
    if expected_owner is not _ANY:
        owners: dict[str, Any] = {"owner": expected_owner}  # None matches a document without an owner
    else:
        owners = {"owner": owner} if owner is not None else {}
    if expected is not None:
        doc = coll.find_one_and_update({"_id": session_id, "version": expected, **owners, **_LIVE}, update)
        if doc is None:
            current = coll.find_one({"_id": session_id, **_LIVE}, {"version": 1, "owner": 1})
            if current is not None and int(current["version"]) == expected:
                if _owner_refused(current.get("owner"), owner, expected_owner):
                    raise OwnerConflict(session_id, owner, current.get("owner"), expected=expected_owner is not _ANY)
            metering.event(FEATURE, "conflict")
            raise Conflict(session_id, expected, int(current["version"]) if current else 0)
        _raise_fence_later()
        return int(doc["version"])
    for _ in range(3):
        doc = coll.find_one_and_update({"_id": session_id, **owners, **_LIVE}, update)
        if doc is not None:
            _raise_fence_later()
            return int(doc["version"])
        if _create(coll, session_id, text, owner, now, token, in_redis):
            return 1
        # The id holds a session of another owner, or a session created since the update above (the next
        # attempt updates it).
        current = coll.find_one({"_id": session_id, **_LIVE}, {"owner": 1})
        if current is not None and _owner_refused(current.get("owner"), owner, expected_owner):
            raise OwnerConflict(session_id, owner, current.get("owner"), expected=expected_owner is not _ANY)
    msg = f"workbench session {session_id!r}: concurrent creation did not settle"
    raise MongoUnavailable(msg)


def _mongo_load(session_id: str) -> Session | None:
    _flush_before_fallback()
    doc = _active().find_one_and_update({"_id": session_id, **_LIVE}, {"$set": {"last_seen": clock.utcnow()}})
    return _mongo_doc_session(doc) if doc else None


def _mongo_end(session_id: str, *, redis_gone: bool = False) -> bool:
    """End the session from its workbench_active copy: history now, then the copy leaves. ``redis_gone``: Redis
    holds no incarnation of it any more (so no tombstone is needed to drop one when Redis returns)."""
    _flush_before_fallback()
    coll = _active()
    doc = coll.find_one({"_id": session_id, **_LIVE})
    if doc is None:
        return False
    now = clock.utcnow()
    _write_history([_copy_record(doc, closed=now, reason="ended")])
    # Only the version written to history leaves; a save in between keeps the session active.
    current = {"_id": session_id, "version": doc["version"], "token": doc["token"]}
    if not redis_gone and (doc.get("from_redis") or doc.get("gone_token")):
        # Redis may still hold this incarnation (a durable copy), or an older one: leave a tombstone so
        # that the recovery drops it there instead of bringing an ended session back.
        tomb = {"ended": True, "origin": _FALLBACK, "state": "{}", "last_seen": now}
        if coll.update_one(current, {"$set": tomb, "$unset": {"gone_token": "", "gone_version": ""}}):
            _raise_fence_later()
    else:
        coll.delete_one(current)
    return True
