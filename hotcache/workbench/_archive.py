"""MongoDB history (workbench_history): the record of a session, the rank-guarded bulk write (exactly once per
incarnation, newer versions replace older), and history(). See docs/workbench.md#persisting.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import Any

from hotcache import clock, recovery
from hotcache.backends import mongo
from hotcache.workbench._envelope import _ts
from hotcache.workbench._layout import _history
from hotcache.workbench._results import HistoryEntry, InvalidInput
from hotcache.workbench._state import _check_owner

log = logging.getLogger("hotcache.workbench")


def _history_record(
    *,
    session_id: str,
    token: str,
    text: str,
    version: int,
    owner: str | None,
    created: dt.datetime,
    updated: dt.datetime,
    closed: dt.datetime,
    reason: str,
) -> dict[str, Any]:
    return {
        "_id": f"{session_id}:{token}",
        "session_id": session_id,
        "token": token,
        "version": version,
        "rank": version * 2 + (1 if reason == "ended" else 0),
        "state": text,  # JSON text: any JSON object key is safe, and MongoDB field-name rules do not apply
        "owner": owner,
        "created_at": created,
        "updated_at": updated,
        "closed_at": closed,
        "reason": reason,
        "persisted_at": clock.utcnow(),
    }


def _copy_record(doc: Mapping[str, Any], *, closed: dt.datetime, reason: str) -> dict[str, Any]:
    """The history record of a workbench_active document (a durable or an outage copy), closed at ``closed``."""
    return _history_record(
        session_id=doc["_id"],
        token=doc["token"],
        text=doc["state"],
        version=int(doc["version"]),
        owner=doc.get("owner"),
        created=_ts(doc["created_at"]),
        updated=_ts(doc["updated_at"]),
        closed=closed,
        reason=reason,
    )


def _write_history(records: list[dict[str, Any]]) -> set[int]:
    """Write history records in bulk; return the indexes of records that were already there.

    One unordered bulk insert (the common case: new records, one round trip). Records whose _id exists
    (E11000: a replay, another worker, or a session persisted earlier at an older version) are retried once
    as rank-guarded upserts (recovery.bulk_retrying_duplicates): a newer version replaces the stored one; a
    record that is not newer matches nothing, upserts on the existing _id and fails with E11000 again:
    already persisted.
    """
    if not records:
        return set()
    done = recovery.bulk_retrying_duplicates(_history(), [mongo.Insert(rec) for rec in records], _newer_only)
    return done.still_duplicate


def _newer_only(op: mongo.Update | mongo.Insert) -> mongo.Update:
    rec = op.document if isinstance(op, mongo.Insert) else op.update["$set"]
    return mongo.Update({"_id": rec["_id"], "rank": {"$lt": rec["rank"]}}, {"$set": rec}, upsert=True)


def history(owner: str | int | None = None, limit: int = 50) -> list[HistoryEntry]:
    """Sessions in MongoDB history (ended or abandoned), newest first; only ``owner``'s if given."""
    owner = _check_owner(owner)
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidInput("limit", f"limit must be a whole number, not {type(limit).__name__}")
    limit = max(1, min(limit, 1000))
    docs = _history().find(
        {"owner": owner} if owner is not None else {},
        sort=[("closed_at", mongo.DESCENDING), ("_id", mongo.ASCENDING)],
        limit=limit,
    )
    return [
        HistoryEntry(
            session_id=d["session_id"],
            state=json.loads(d["state"]),
            version=int(d["version"]),
            owner=d.get("owner"),
            created_at=_ts(d["created_at"]),
            updated_at=_ts(d["updated_at"]),
            closed_at=_ts(d["closed_at"]),
            reason=d["reason"],
        )
        for d in docs
    ]
