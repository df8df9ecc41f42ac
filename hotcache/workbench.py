"""Workbench sessions: hot JSON state in Redis with optimistic versions; every ended or abandoned session
reaches MongoDB history (``workbench_history``) exactly once.

Redis layout (one hash tag, ``{workbench:s}``, because the Lua scripts touch the index and the sessions
together; fine for the volumes a workbench has):

    d:<id>          HASH s=state JSON, v=version, o=owner, g=incarnation token, c=created, u=updated.
                    TTL WORKBENCH_IDLE_TIMEOUT, renewed by every save and load (the idle lifetime).
    idx             ZSET id -> last seen (hotcache clock time, so tests age sessions with the clock).
    e:<id>:<tok>    HASH an ended session, renamed away from d:<id> by end() (immutable; TTL WORKBENCH_ENDED_TTL).
    ended           ZSET "<id>:<tok>" -> end time: the queue for history.
    claims, owners  ZSET member -> claim time and HASH member -> run id: what a persister run has taken.

save() is one EVALSHA (version check + write + index + TTL), load() one EVALSHA (read + TTL + index),
end() one EVALSHA (rename to an ended key + queue).

Persisting (``persist()``, run by the beat task ``hotcache.tasks.persist_workbench_sessions`` and by
``manage.py persist_workbench``) is claim -> write -> ack, so no lock is needed for correctness:

1. claim (Lua): take stale claims of crashed runs, then ended sessions, then sessions idle longer than
   WORKBENCH_PERSIST_IDLE_AFTER, moving them out of their queue into ``claims`` owned by this run;
2. read the claimed sessions (one pipeline) and bulk-upsert them into ``workbench_history`` (one
   MongoDB round trip per batch of WORKBENCH_PERSIST_BATCH). A history record is keyed
   ``<id>:<incarnation token>`` and guarded by ``rank`` (2*version + ended): a replay, or a second
   worker writing the same session, matches nothing, upserts on an existing ``_id`` and gets E11000,
   which means "already persisted"; a newer version of the same session replaces the older record.
   (The key carries the incarnation token, not the version, so a session edited after it was persisted
   as idle still has one history record, and a reused id never collides with an old session.)
3. ack (Lua): only after MongoDB acknowledged, delete ended keys and idle sessions whose version is the
   one written and that nobody touched since the claim (an edited session stays hot).

A crash or MongoDB outage after the claim leaves the members in ``claims``; a run that knows it failed
makes them stale at once, a crashed run's claims go stale after WORKBENCH_CLAIM_TIMEOUT; the next run
takes them over. Keyspace notifications are not used: they are lossy and fire after the value is gone.
The check hotcache.E051 keeps PERSIST_IDLE_AFTER + PERSIST_INTERVAL + CLAIM_TIMEOUT below IDLE_TIMEOUT,
so an abandoned session reaches history before Redis would expire it.

Redis down (policy: degrade to MongoDB, never fail): save/load/end work on the ``workbench_active``
collection with the same versions and conflicts (find_one_and_update filtered on the version). end() there
writes the history record directly. When Redis is back, a load (or a save with expected_version) that
misses in Redis but finds the session in ``workbench_active`` moves it into Redis and continues from its
version; persist() also sweeps ``workbench_active`` for idle sessions. Limits, by design (MongoDB load is
what this feature removes): saves are not written through, so a session saved to Redis before an outage
is not visible during it (load returns None for it until Redis is back; nothing is lost). With both
Redis and MongoDB down, save/load/end raise BackendUnavailable. A load that misses in Redis costs one
MongoDB read (the outage-copy check). A blind save
(no expected_version) of an id that Redis does not know starts a new incarnation even if
``workbench_active`` holds one from the outage; both reach history.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hotcache import clock, keys, metering
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import BackendUnavailable, DuplicateKey, HotcacheError, MongoUnavailable, RedisUnavailable

__all__ = [
    "Conflict",
    "HistoryEntry",
    "PersistResult",
    "Session",
    "SessionCounts",
    "counts",
    "end",
    "history",
    "load",
    "persist",
    "save",
]

log = logging.getLogger("hotcache.workbench")

FEATURE = "workbench"
HISTORY = "workbench_history"
ACTIVE = "workbench_active"
# Ids are kept verbatim in keys and history ids: no ':' (the separator of queue members and history ids).
_ID_PATTERN = r"[A-Za-z0-9_.@+\-]{1,64}"
_OWNER_PATTERN = r"[A-Za-z0-9_.:@+\-]{1,128}"
_QUEUE_TTL_FACTOR = 4  # the queue keys outlive every session in them

_SAVE = redis_backend.Script("wb_save")
_LOAD = redis_backend.Script("wb_load")
_IMPORT = redis_backend.Script("wb_import")
_END = redis_backend.Script("wb_end")
_CLAIM = redis_backend.Script("wb_claim")
_ACK = redis_backend.Script("wb_ack")
_RELEASE = redis_backend.Script("wb_release")


class Conflict(HotcacheError):
    """save(expected_version=N) found another version: someone saved in between. Load, merge, retry."""

    def __init__(self, session_id: str, expected: int, current: int) -> None:
        super().__init__(f"workbench session {session_id!r} is at version {current}, not {expected}")
        self.session_id = session_id
        self.expected = expected
        self.current = current


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    state: dict[str, Any]
    version: int
    owner: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    session_id: str
    state: dict[str, Any]
    version: int
    owner: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    closed_at: dt.datetime  # when it ended; for an abandoned session, its last update (last seen on the fallback)
    reason: str  # "ended" | "idle"


@dataclass(slots=True)
class PersistResult:
    ended: int = 0  # ended sessions written to history by this run
    idle: int = 0  # abandoned sessions written to history
    already: int = 0  # already in history (a replay or another worker): not written again
    kept: int = 0  # touched after the claim: written, but left hot
    missing: int = 0  # claimed but gone from Redis (expired before any persister ran)
    recovered: int = 0  # stale claims of an earlier run taken over
    from_fallback: int = 0  # sessions swept from workbench_active
    batches: int = 0  # MongoDB bulk writes
    dry_run: bool = False
    pending: dict[str, int] = field(default_factory=dict)  # dry run: what would be moved
    errors: list[str] = field(default_factory=list)

    @property
    def persisted(self) -> int:
        return self.ended + self.idle + self.from_fallback

    def as_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.__slots__}
        out["persisted"] = self.persisted
        return out


# --- keys and validation -------------------------------------------------------------------------


def _data_key(session_id: str) -> str:
    return keys.tagged(FEATURE, "s", "d", session_id)


def _ended_key(session_id: str, token: str) -> str:
    return keys.tagged(FEATURE, "s", "e", session_id, token)


def _index_key() -> str:
    return keys.tagged(FEATURE, "s", "idx")


def _ended_queue() -> str:
    return keys.tagged(FEATURE, "s", "ended")


def _claims_key() -> str:
    return keys.tagged(FEATURE, "s", "claims")


def _owners_key() -> str:
    return keys.tagged(FEATURE, "s", "owners")


def _check_id(session_id: object) -> str:
    return keys.validate_name(session_id, what="workbench session id", pattern=_ID_PATTERN)


def _check_owner(owner: object) -> str | None:
    if owner is None:
        return None
    if isinstance(owner, int) and not isinstance(owner, bool):
        owner = str(owner)
    return keys.validate_name(owner, what="workbench owner", pattern=_OWNER_PATTERN)


def _encode_state(state: object) -> str:
    """The state as compact JSON; ValueError (with the reason) if it is not a JSON object or too big."""
    if not isinstance(state, Mapping):
        msg = f"workbench state must be a dict (a JSON object), not {type(state).__name__}"
        raise ValueError(msg)
    try:
        text = json.dumps(dict(state), separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        msg = f"workbench state is not JSON-serialisable: {exc}"
        raise ValueError(msg) from exc
    size = len(text.encode("utf-8"))
    limit = int(hotcache_settings.WORKBENCH_MAX_STATE_BYTES)
    if size > limit:
        msg = (
            f"workbench state is {size} bytes as JSON, over the limit of {limit} "
            "(HOTCACHE['WORKBENCH_MAX_STATE_BYTES'])"
        )
        raise ValueError(msg)
    return text


def _ts(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, bytes):
        value = value.decode()
    return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- MongoDB collections -------------------------------------------------------------------------


def _history() -> mongo.Collection:
    def create(c: mongo.Collection) -> None:
        c.create_index([("owner", mongo.ASCENDING), ("closed_at", mongo.DESCENDING)], name="owner_closed")
        c.create_index([("closed_at", mongo.DESCENDING)], name="closed")

    return mongo.ensure_indexes(HISTORY, feature=FEATURE, create=create)


def _active() -> mongo.Collection:
    def create(c: mongo.Collection) -> None:
        c.create_index([("last_seen", mongo.ASCENDING)], name="last_seen")

    return mongo.ensure_indexes(ACTIVE, feature=FEATURE, create=create)


# --- the service ---------------------------------------------------------------------------------


def save(
    session_id: str, state: dict[str, Any], owner: str | int | None = None, expected_version: int | None = None
) -> int:
    """Store ``state`` as the session's next version and return it.

    With ``expected_version`` the write happens only if the session is at that version (0: only if it does
    not exist yet); otherwise Conflict. Renews the idle lifetime. ValueError (nothing written) for an
    invalid id, owner or state.
    """
    session_id = _check_id(session_id)
    owner = _check_owner(owner)
    if expected_version is not None and (
        not isinstance(expected_version, int) or isinstance(expected_version, bool) or expected_version < 0
    ):
        msg = f"expected_version must be a whole number >= 0, not {expected_version!r}"
        raise ValueError(msg)
    text = _encode_state(state)
    try:
        version = _redis_save(session_id, text, owner, expected_version)
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        version = _mongo_save(session_id, text, owner, expected_version)
    metering.event(FEATURE, "saved")
    return version


def _redis_save(session_id: str, text: str, owner: str | None, expected: int | None, *, retry: bool = True) -> int:
    now = clock.time()
    ttl = int(hotcache_settings.WORKBENCH_IDLE_TIMEOUT)
    args = [text, "" if expected is None else str(expected), owner or "", repr(now), ttl, _token(), session_id]
    keys_ = [_data_key(session_id), _index_key()]
    version, extra = redis_backend.call(FEATURE, lambda r: _SAVE(r, keys_, args))
    if version == -1:
        current = int(extra)
        if current == 0 and expected and retry and _migrate(session_id) is not None:
            # The session lives in workbench_active (saved there during a Redis outage): continue from it.
            return _redis_save(session_id, text, owner, expected, retry=False)
        metering.event(FEATURE, "conflict")
        raise Conflict(session_id, int(expected or 0), current)
    return int(version)


def load(session_id: str) -> Session | None:
    """The session, or None if there is none (never saved, ended, or persisted as abandoned). Renews its lifetime."""
    session_id = _check_id(session_id)
    now = clock.time()
    ttl = int(hotcache_settings.WORKBENCH_IDLE_TIMEOUT)
    keys_ = [_data_key(session_id), _index_key()]
    try:
        row = redis_backend.call(FEATURE, lambda r: _LOAD(r, keys_, [repr(now), ttl, session_id]))
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        session = _mongo_load(session_id)
    else:
        # A Redis miss may be a session that lived on MongoDB during an outage: bring it back.
        session = _redis_row(session_id, row) if row else _migrate(session_id)
    if session is not None:
        metering.event(FEATURE, "loaded")
    return session


def _redis_row(session_id: str, row: list[Any]) -> Session:
    state, version, owner, _, created, updated = row
    owner_text = _text(owner) if owner else ""
    return Session(
        session_id=session_id,
        state=json.loads(state),
        version=int(version),
        owner=owner_text or None,
        created_at=_ts(created),
        updated_at=_ts(updated),
    )


def end(session_id: str) -> bool:
    """End the session: it leaves the hot store at once and is queued for history. False if there was none."""
    session_id = _check_id(session_id)
    now = clock.time()
    token = _token()
    keys_ = [_data_key(session_id), _index_key(), _ended_queue(), _ended_key(session_id, token)]
    args = [repr(now), int(hotcache_settings.WORKBENCH_ENDED_TTL), f"{session_id}:{token}", session_id]
    try:
        version = redis_backend.call(FEATURE, lambda r: _END(r, keys_, args))
        ended = bool(version)
        if not ended:
            # Saved on MongoDB during an outage and not yet loaded since: end it there.
            ended = _mongo_end(session_id)
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        ended = _mongo_end(session_id)
    if ended:
        metering.event(FEATURE, "ended")
    return ended


def history(owner: str | int | None = None, limit: int = 50) -> list[HistoryEntry]:
    """Sessions in MongoDB history (ended or abandoned), newest first; only ``owner``'s if given."""
    owner = _check_owner(owner)
    limit = max(1, min(int(limit), 1000))
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


@dataclass(frozen=True, slots=True)
class SessionCounts:
    active: int  # sessions in the Redis index (hot, or idle and waiting for the persister)
    idle: int  # of those, unused longer than WORKBENCH_PERSIST_IDLE_AFTER
    ended: int  # ended sessions queued for history
    claimed: int  # taken by a persister run that has not acknowledged yet


def counts() -> SessionCounts:
    """How many sessions are where, from the Redis indexes: one round trip of 4 O(1)/O(log n) commands.

    Raises RedisUnavailable (the figures live only in Redis).
    """
    stale = clock.time() - float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER)

    def read(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        pipe.zcard(_index_key())
        pipe.zcount(_index_key(), "-inf", stale)
        pipe.zcard(_ended_queue())
        pipe.zcard(_claims_key())
        return pipe.execute()

    active, idle, ended, claimed = (int(n) for n in redis_backend.call(FEATURE, read))
    return SessionCounts(active=active, idle=idle, ended=ended, claimed=claimed)


def _token() -> str:
    return secrets.token_hex(6)


# --- the MongoDB fallback (workbench_active) -------------------------------------------------------


def _mongo_doc_session(doc: Mapping[str, Any]) -> Session:
    return Session(
        session_id=doc["_id"],
        state=json.loads(doc["state"]),
        version=int(doc["version"]),
        owner=doc.get("owner"),
        created_at=_ts(doc["created_at"]),
        updated_at=_ts(doc["updated_at"]),
    )


def _mongo_save(session_id: str, text: str, owner: str | None, expected: int | None) -> int:
    coll = _active()
    now = clock.utcnow()
    fields: dict[str, Any] = {"state": text, "updated_at": now, "last_seen": now}
    if expected == 0:
        doc = {"_id": session_id, "version": 1, "token": _token(), "owner": owner, "created_at": now, **fields}
        try:
            coll.insert_one(doc)
        except DuplicateKey:
            current = coll.find_one({"_id": session_id}, {"version": 1})
            metering.event(FEATURE, "conflict")
            raise Conflict(session_id, 0, int(current["version"]) if current else 0) from None
        return 1
    if owner is not None:
        fields["owner"] = owner
    update: dict[str, Any] = {"$set": fields, "$inc": {"version": 1}}
    if expected is not None:
        doc = coll.find_one_and_update({"_id": session_id, "version": expected}, update)
        if doc is None:
            current = coll.find_one({"_id": session_id}, {"version": 1})
            metering.event(FEATURE, "conflict")
            raise Conflict(session_id, expected, int(current["version"]) if current else 0)
        return int(doc["version"])
    insert_only = {"token": _token(), "created_at": now}
    if owner is None:
        insert_only["owner"] = None
    update["$setOnInsert"] = insert_only
    for _ in range(2):
        try:
            doc = coll.find_one_and_update({"_id": session_id}, update, upsert=True)
        except DuplicateKey:
            continue  # two first saves raced on the upsert; the second attempt updates the winner's document
        assert doc is not None
        return int(doc["version"])
    msg = f"workbench session {session_id!r}: concurrent creation did not settle"
    raise MongoUnavailable(msg)


def _mongo_load(session_id: str) -> Session | None:
    doc = _active().find_one_and_update({"_id": session_id}, {"$set": {"last_seen": clock.utcnow()}})
    return _mongo_doc_session(doc) if doc else None


def _mongo_end(session_id: str) -> bool:
    coll = _active()
    doc = coll.find_one({"_id": session_id})
    if doc is None:
        return False
    now = clock.utcnow()
    record = _history_record(
        session_id=session_id,
        token=doc["token"],
        text=doc["state"],
        version=int(doc["version"]),
        owner=doc.get("owner"),
        created=_ts(doc["created_at"]),
        updated=_ts(doc["updated_at"]),
        closed=now,
        reason="ended",
    )
    _write_history([record])
    # Only the version written to history leaves; a save in between keeps the session active.
    coll.delete_one({"_id": session_id, "version": doc["version"]})
    return True


def _migrate(session_id: str) -> Session | None:
    """Move a session saved on MongoDB during a Redis outage back into Redis; None if there is none."""
    try:
        doc = _active().find_one({"_id": session_id})
    except BackendUnavailable:
        log.warning("hotcache.workbench: MongoDB unavailable while checking %s for an outage copy", session_id)
        return None
    if doc is None:
        return None
    session = _mongo_doc_session(doc)
    now = clock.time()
    args = [
        doc["state"],
        session.version,
        session.owner or "",
        doc["token"],
        repr(session.created_at.timestamp()),
        repr(session.updated_at.timestamp()),
        repr(now),
        int(hotcache_settings.WORKBENCH_IDLE_TIMEOUT),
        session_id,
    ]
    keys_ = [_data_key(session_id), _index_key()]
    try:
        imported = redis_backend.call(FEATURE, lambda r: _IMPORT(r, keys_, args))
    except RedisUnavailable:
        return session
    if not imported:
        # Redis got a session under this id meanwhile; the MongoDB copy stays for the sweeper (history).
        row = redis_backend.call(FEATURE, lambda r: _LOAD(r, keys_, [repr(now), args[7], session_id]))
        return _redis_row(session_id, row) if row else None
    try:
        _active().delete_one({"_id": session_id, "version": session.version})
    except BackendUnavailable:
        log.warning("hotcache.workbench: migrated %s to Redis; its MongoDB copy stays for the sweeper", session_id)
    return session


# --- persisting --------------------------------------------------------------------------------------


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


def _write_history(records: list[dict[str, Any]]) -> set[int]:
    """Write history records in bulk; return the indexes of records that were already there.

    First one unordered bulk insert (the common case: new records, one round trip). Records whose _id
    exists (E11000: a replay, another worker, or a session persisted earlier at an older version) get a
    second bulk of rank-guarded upserts: a newer version replaces the stored one; a record that is not
    newer matches nothing, upserts on the existing _id and fails with E11000 again: already persisted.
    """
    if not records:
        return set()
    coll = _history()
    first = coll.bulk([mongo.Insert(rec) for rec in records], ordered=False)
    if not first.duplicates:
        return set()
    again = [records[i] for i in first.duplicates]
    ops = [mongo.Update({"_id": rec["_id"], "rank": {"$lt": rec["rank"]}}, {"$set": rec}, upsert=True) for rec in again]
    second = coll.bulk(ops, ordered=False)
    return {first.duplicates[i] for i in second.duplicates}


def _claim(run_id: str, limit: int) -> list[str]:
    now = clock.time()
    ttl = int(hotcache_settings.WORKBENCH_ENDED_TTL) * _QUEUE_TTL_FACTOR
    idle_cutoff = now - float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER)
    stale_cutoff = now - float(hotcache_settings.WORKBENCH_CLAIM_TIMEOUT)
    keys_ = [_index_key(), _ended_queue(), _claims_key(), _owners_key()]
    args = [repr(now), repr(idle_cutoff), repr(stale_cutoff), run_id, limit, ttl]
    return [_text(m) for m in redis_backend.call(FEATURE, lambda r: _CLAIM(r, keys_, args))]


@dataclass(slots=True)
class _Claimed:
    member: str
    kind: str  # "e" | "i"
    session_id: str
    key: str
    row: dict[str, str] | None = None


def _parse_member(member: str) -> _Claimed:
    kind, rest = member.split(":", 1)
    if kind == "e":
        session_id, token = rest.split(":", 1)
        return _Claimed(member, kind, session_id, _ended_key(session_id, token))
    return _Claimed(member, kind, rest, _data_key(rest))


def _read(claimed: list[_Claimed]) -> None:
    """Read the claimed sessions and keep them alive while claimed (one pipeline)."""
    idle_ttl = int(hotcache_settings.WORKBENCH_IDLE_TIMEOUT)
    ended_ttl = int(hotcache_settings.WORKBENCH_ENDED_TTL)

    def run(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for c in claimed:
            pipe.hgetall(c.key)
            pipe.expire(c.key, ended_ttl if c.kind == "e" else idle_ttl)
        return pipe.execute()

    replies = redis_backend.call(FEATURE, run)
    for c, raw in zip(claimed, replies[0::2], strict=True):
        row = {_text(k): _text(v) for k, v in raw.items()}
        c.row = row if "v" in row else None


def _record_for(c: _Claimed) -> dict[str, Any]:
    row = c.row
    assert row is not None
    ended = c.kind == "e"
    closed = float(row["e"]) if ended else float(row["u"])
    return _history_record(
        session_id=c.session_id,
        token=row["g"],
        text=row["s"],
        version=int(row["v"]),
        owner=row.get("o") or None,
        created=_ts(row["c"]),
        updated=_ts(row["u"]),
        closed=_ts(closed),
        reason="ended" if ended else "idle",
    )


def _ack(run_id: str, claimed: list[_Claimed]) -> tuple[int, int]:
    keys_ = [_index_key(), _claims_key(), _owners_key()]
    args: list[Any] = [run_id]
    for c in claimed:
        keys_.append(c.key)
        row = c.row or {}
        args += [c.member, c.kind, c.session_id, row.get("v", ""), row.get("g", "")]
    acked, kept = redis_backend.call(FEATURE, lambda r: _ACK(r, keys_, args))
    return int(acked), int(kept)


def _release(run_id: str, members: list[str]) -> None:
    try:
        redis_backend.call(FEATURE, lambda r: _RELEASE(r, [_claims_key(), _owners_key()], [run_id, *members]))
    except RedisUnavailable:
        pass  # the claims go stale after WORKBENCH_CLAIM_TIMEOUT instead


def _persist_batch(run_id: str, result: PersistResult, limit: int) -> int:
    """Claim, write and ack one batch; returns how many members were claimed (0 = nothing left)."""
    members = _claim(run_id, limit)
    if not members:
        return 0
    try:
        claimed = [_parse_member(m) for m in members]
        _read(claimed)
        present = [c for c in claimed if c.row is not None]
        records = [_record_for(c) for c in present]
        duplicates = _write_history(records)
        result.batches += 1
        _acked, kept = _ack(run_id, claimed)
    except BaseException:
        _release(run_id, members)
        raise
    result.missing += len(claimed) - len(present)
    result.kept += kept
    for i, c in enumerate(present):
        if i in duplicates:
            result.already += 1
        elif c.kind == "e":
            result.ended += 1
        else:
            result.idle += 1
    return len(members)


def _sweep_active(result: PersistResult, limit: int, max_batches: int) -> None:
    """Move sessions idle in workbench_active (saved there during a Redis outage) into history."""
    coll = _active()
    cutoff = clock.utcnow() - dt.timedelta(seconds=float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER))
    for _ in range(max_batches):
        docs = coll.find({"last_seen": {"$lt": cutoff}}, sort=[("last_seen", mongo.ASCENDING)], limit=limit)
        if not docs:
            return
        records = [
            _history_record(
                session_id=d["_id"],
                token=d["token"],
                text=d["state"],
                version=int(d["version"]),
                owner=d.get("owner"),
                created=_ts(d["created_at"]),
                updated=_ts(d["updated_at"]),
                closed=_ts(d["last_seen"]),
                reason="idle",
            )
            for d in docs
        ]
        duplicates = _write_history(records)
        result.batches += 1
        result.from_fallback += len(records) - len(duplicates)
        result.already += len(duplicates)
        # Only the exact version and last-seen written leave: a session used meanwhile stays active.
        coll.delete_many(
            {"$or": [{"_id": d["_id"], "version": d["version"], "last_seen": d["last_seen"]} for d in docs]}
        )
        if len(docs) < limit:
            return


def persist(*, dry_run: bool = False, limit: int | None = None) -> PersistResult:
    """Move ended sessions, and sessions idle past WORKBENCH_PERSIST_IDLE_AFTER, into MongoDB history.

    Safe to run concurrently and to rerun after a crash (claim -> bulk write -> ack; history is keyed).
    ``limit`` caps the sessions handled in this run (default: all that are due). ``dry_run`` only counts.
    """
    result = PersistResult(dry_run=dry_run)
    if dry_run:
        result.pending = _pending()
        return result
    batch = int(hotcache_settings.WORKBENCH_PERSIST_BATCH)
    remaining = limit if limit is not None else None
    run_id = uuid.uuid4().hex
    before_claims = _stale_claims()
    try:
        while remaining is None or remaining > 0:
            size = batch if remaining is None else min(batch, remaining)
            n = _persist_batch(run_id, result, size)
            if n == 0:
                break
            if remaining is not None:
                remaining -= n
    except RedisUnavailable as exc:
        result.errors.append(f"redis: {exc}")
    except BackendUnavailable as exc:
        result.errors.append(f"mongodb: {exc} (claimed sessions stay queued for the next run)")
    result.recovered = before_claims
    if not any(e.startswith("mongodb") for e in result.errors):
        try:
            _sweep_active(result, batch, max_batches=max(1, (limit or 10**9) // batch + 1))
        except BackendUnavailable as exc:
            result.errors.append(f"mongodb: {exc}")
    if result.persisted:
        metering.event(FEATURE, "persisted", result.persisted)
    for message in result.errors:
        log.warning("hotcache.workbench: persist incomplete: %s", message)
    return result


def _stale_claims() -> int:
    cutoff = clock.time() - float(hotcache_settings.WORKBENCH_CLAIM_TIMEOUT)
    try:
        return int(redis_backend.call(FEATURE, lambda r: r.zcount(_claims_key(), "-inf", repr(cutoff))))
    except RedisUnavailable:
        return 0


def _pending() -> dict[str, int]:
    """What a run would take now (read-only; one pipeline plus one MongoDB count)."""
    now = clock.time()
    idle_cutoff = now - float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER)
    stale_cutoff = now - float(hotcache_settings.WORKBENCH_CLAIM_TIMEOUT)
    out: dict[str, int] = {}

    def run(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        pipe.zcard(_ended_queue())
        pipe.zcount(_index_key(), "-inf", repr(idle_cutoff))
        pipe.zcount(_claims_key(), "-inf", repr(stale_cutoff))
        return pipe.execute()

    try:
        ended, idle, stale = redis_backend.call(FEATURE, run)
        out.update(ended=int(ended), idle=int(idle), stale_claims=int(stale))
    except RedisUnavailable:
        out["redis_unavailable"] = 1
    try:
        cutoff = clock.utcnow() - dt.timedelta(seconds=float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER))
        out["fallback_idle"] = _active().count({"last_seen": {"$lt": cutoff}})
    except BackendUnavailable:
        out["mongodb_unavailable"] = 1
    return out
