"""The durable copy of each Redis save in workbench_active, written off the request path: saves are coalesced
per session in this process (only the newest version is written) and written in one bulk per
WORKBENCH_DURABLE_INTERVAL by a daemon thread; 0 writes each copy on the request path. An end() in Redis
queues its session's *ended mark* in the same bulk (0 MongoDB operations on the request path).

Every copy is a version-guarded upsert of its own incarnation, so a late, duplicate or out-of-order write never
replaces a newer one. A copy replaces another incarnation's copy only once Redis confirms that its incarnation is
the one Redis holds (off the request path, only when the id was reused): a late copy of an ended incarnation never
replaces the copy of the session created again under its id.
The ended mark is a version-guarded upsert too: it turns the incarnation's copy into a tombstone at the ended
version, so a copy another process writes late (saved before the end, written after it) is refused by
MongoDB whichever lands first. Until the mark lands, the recovery check reads Redis's ended records
(_recover.py), so no process brings the ended session back from its copy.
Pending copies are written at exit (atexit, Celery's worker shutdown signals, ``flush_durable()`` from a
gunicorn ``worker_exit`` hook) and before this process reads or writes workbench_active itself (the Redis
outage path), so a session it saved before an outage is loadable here during it. A process killed outright
loses at most one interval of copies (the sessions are still in Redis). See docs/workbench.md ("durable saves").
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hotcache import clock, metering
from hotcache.backends import mongo
from hotcache.conf import hotcache_settings
from hotcache.exceptions import BackendUnavailable, DuplicateKey, RedisUnavailable
from hotcache.periodic import PeriodicBuffer
from hotcache.workbench._archive import _copy_record, _write_history
from hotcache.workbench._envelope import _Envelope, _open_envelope, _read_envelopes, _ts
from hotcache.workbench._layout import _REDIS, FEATURE, _active

log = logging.getLogger("hotcache.workbench")

_durable_failed_logged = False


def _interval() -> float:
    return float(hotcache_settings.WORKBENCH_DURABLE_INTERVAL)


@dataclass(slots=True)
class _Copy:
    """The newest save of one session this process has not copied yet."""

    envelope: _Envelope
    text: str
    ended: bool = False  # end() ended this incarnation at envelope.version: the ended mark, not a copy


def _filter_and_update(session_id: str, envelope: _Envelope, text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The upsert of one copy. The filter matches the session's document only if it holds an older version of
    the same incarnation; otherwise the upsert tries to insert on the existing _id and gets E11000: a newer
    version, an outage copy or another incarnation's copy is there (the last is replaced only by
    _replace_incarnations, once Redis confirms this incarnation is the current one). A copy that replaces
    another incarnation's ended mark is not ended itself (``ended`` unset), or the new session would be
    invisible during an outage (as the outage path does over a tombstone, _fallback.py)."""
    updated = _ts(envelope.updated)
    doc = {
        "state": text,
        "version": envelope.version,
        "token": envelope.token,
        "owner": envelope.owner,
        "created_at": _ts(envelope.created),
        "updated_at": updated,
        "last_seen": updated,
        "origin": _REDIS,
        "from_redis": True,
    }
    flt = {"_id": session_id, "token": envelope.token, "version": {"$lt": envelope.version}}
    return flt, {"$set": doc, "$unset": {"ended": ""}}


def _ended_mark(session_id: str, envelope: _Envelope) -> mongo.Update:
    """The ended mark of an incarnation ended in Redis at ``envelope.version``: its copy (of that version or
    older) becomes a tombstone at that version, or one is inserted. The tombstone refuses any later copy of the
    incarnation (a copy's upsert matches only an older version), whichever of the two lands first. A document
    of another incarnation, or a newer outage version, is left as it is (the upsert meets E11000)."""
    now = clock.utcnow()
    flt = {"_id": session_id, "token": envelope.token, "version": {"$lte": envelope.version}, "origin": _REDIS}
    mark = {
        "ended": True,
        "version": envelope.version,
        "state": "{}",
        "owner": envelope.owner,
        "created_at": _ts(envelope.created),
        "updated_at": _ts(envelope.updated),
        "last_seen": now,
        "from_redis": True,
    }
    return mongo.Update(flt, {"$set": mark}, upsert=True)


def _durable_write(session_id: str, envelope: _Envelope, text: str, *, ended: bool = False) -> None:
    """Copy one Redis save to workbench_active now: ONE conditional upsert that never replaces a newer version
    (``ended``: the ended mark instead). An id that holds another incarnation's copy takes the path of
    _replace_incarnations (one read, one Redis round trip, one write)."""
    flt, update = _filter_and_update(session_id, envelope, text)
    try:
        if ended:
            mark = _ended_mark(session_id, envelope)
            _active().update_one(mark.filter, mark.update, upsert=True)
        else:
            try:
                _active().update_one(flt, update, upsert=True)
            except DuplicateKey:
                _replace_incarnations({session_id: _Copy(envelope, text)})
    except DuplicateKey:
        return  # the ended mark is refused: a newer version (or another incarnation) is there
    except BackendUnavailable:
        _failed(1)
        return
    _succeeded()


def _write_copies(copies: Mapping[str, _Copy]) -> None:
    """Write pending copies and ended marks in ONE unordered bulk (E11000 rows: a newer version, the ended
    mark, or another incarnation's copy is already there).

    Each copy's row writes only its own incarnation (an older version of it, or an id with no document); a copy
    row that meets E11000 (a newer version of it, or another incarnation's copy) takes the path of
    _replace_incarnations for those rows only. So a flush is ONE MongoDB operation unless an id is reused (or
    two processes' copies of one session cross).
    """
    items = list(copies.items())
    try:
        ops = []
        for sid, c in items:
            if c.ended:
                ops.append(_ended_mark(sid, c.envelope))
            else:
                flt, update = _filter_and_update(sid, c.envelope, c.text)
                ops.append(mongo.Update(flt, update, upsert=True))
        done = _active().bulk(ops)
        refused = {items[i][0]: items[i][1] for i in done.duplicates if not items[i][1].ended}
        if refused:
            _replace_incarnations(refused)
    except BackendUnavailable:
        _failed(len(copies))
        return
    _succeeded()


def _replace_incarnations(copies: Mapping[str, _Copy]) -> None:
    """Copies whose id holds a document they may not replace by version: one read of those documents. Another
    incarnation's copy is replaced only if Redis holds this copy's incarnation (one round trip): that one is
    then the newest, the other left Redis (ended, lost or replaced). A late copy of an incarnation that left
    Redis (a save written after its end, with the session created again since) is refused, whatever the
    versions, so it never replaces the newer incarnation's copy. The write is conditional on the document read
    (token and version), so an incarnation created and copied in between is never replaced either. The
    replaced copy, if not an ended mark, goes to history as abandoned (it left Redis). Redis unreachable: not
    written (counted as a failed durable save; the session is still in Redis)."""
    docs = {d["_id"]: d for d in _active().find({"_id": {"$in": list(copies)}})}
    others = {
        sid: doc
        for sid, doc in docs.items()
        if doc.get("token") != copies[sid].envelope.token and doc.get("origin") == _REDIS
    }
    current = _redis_tokens(list(others)) if others else {}
    ops = []
    for sid, c in copies.items():
        flt, update = _filter_and_update(sid, c.envelope, c.text)
        if sid not in docs:  # removed since (the persister): this incarnation's row again
            ops.append(mongo.Update(flt, update, upsert=True))
            continue
        doc = others.get(sid)
        if doc is None or current.get(sid) != c.envelope.token:
            continue  # a newer version of it, an outage copy, or a late copy of an incarnation that left Redis
        if not doc.get("ended"):
            _keep_replaced(sid, doc)
        token = doc.get("token")
        read = {"_id": sid, "token": token if token is not None else {"$exists": False}, "version": doc["version"]}
        ops.append(mongo.Update(read, update, upsert=True))
    _active().bulk(ops)


def _redis_tokens(session_ids: list[str]) -> dict[str, str]:
    """The incarnation token Redis holds for each session that has a verified envelope there (one round trip).
    Redis unreachable: none, and those copies are counted as failed."""
    try:
        observed = _read_envelopes(session_ids)
    except RedisUnavailable:
        _failed(len(session_ids))
        return {}
    envelopes = (_open_envelope(sid, raw) for sid, raw in zip(session_ids, observed, strict=True))
    return {sid: e.token for sid, e in zip(session_ids, envelopes, strict=True) if e is not None}


def _failed(n: int) -> None:
    global _durable_failed_logged
    metering.event(FEATURE, "durable_save_failed", n)
    if not _durable_failed_logged:
        _durable_failed_logged = True
        log.warning(
            "hotcache.workbench: MongoDB unavailable for durable saves; sessions stay in Redis only "
            "(not visible during a Redis outage) until it is back"
        )


def _succeeded() -> None:
    global _durable_failed_logged
    _durable_failed_logged = False


def _keep_replaced(session_id: str, doc: Mapping[str, Any]) -> None:
    """A new incarnation replaced another one's durable copy, which means that one left Redis. Ended or
    persisted, its history record is there or on its way (this write is then a no-op or replaced: history is
    rank-guarded); lost from Redis (deleted, evicted, a restart without persistence), this copy is its last
    trace: it goes to history as abandoned. Only on this path: one bulk write (two if already there)."""
    record = _copy_record(doc, closed=_ts(doc.get("last_seen") or doc["updated_at"]), reason="idle")
    try:
        _write_history([record])
    except BackendUnavailable:
        log.warning("hotcache.workbench: the replaced copy of %s:%s stays out of history", session_id, doc["token"])


class DurableWriter(PeriodicBuffer[dict[str, _Copy]]):
    """This process's pending durable copies, newest version per session, and the daemon that writes them.
    A forked child starts empty with no thread (its parent writes what it holds); its first save starts one."""

    thread_name = "hotcache-workbench-durable"
    log = log
    failure_message = "hotcache.workbench: durable copy write failed"

    def interval(self) -> float:
        return _interval()

    def _empty(self) -> None:
        self._pending: dict[str, _Copy] = {}

    def _take(self) -> dict[str, _Copy]:
        pending, self._pending = self._pending, {}
        return pending

    def __len__(self) -> int:
        """Sessions whose copy is pending."""
        with self._lock:
            return len(self._pending)

    def add(self, session_id: str, envelope: _Envelope, text: str) -> None:
        """Copy this save: now (interval 0), else with the next write (replacing an older pending version)."""
        if _interval() <= 0:
            _durable_write(session_id, envelope, text)
            return
        with self._lock:
            old = self._pending.get(session_id)
            if old is not None and old.envelope.token == envelope.token and old.envelope.version >= envelope.version:
                return  # a newer save of this incarnation (or its ended mark) is already pending
            self._pending[session_id] = _Copy(envelope, text)
            self._buffered()

    def drop(self, session_id: str, envelope: _Envelope) -> None:
        """end() ended this incarnation in Redis at ``envelope``: its pending copy is not written (it would bring
        the ended session back); its ended mark takes its place, written with the next bulk (now, with the
        interval 0). Until it lands, Redis's ended record keeps every process's recovery check from bringing the
        session back (wb_end.lua, _recover.py)."""
        if not hotcache_settings.WORKBENCH_DURABLE_SAVES:
            return
        if _interval() <= 0:
            _durable_write(session_id, envelope, "", ended=True)
            return
        with self._lock:
            old = self._pending.get(session_id)
            if old is not None and old.envelope.token == envelope.token and old.envelope.version > envelope.version:
                return  # not reached: an incarnation takes no save after its end
            self._pending[session_id] = _Copy(envelope, "", ended=True)
            self._buffered()

    def _write(self, taken: dict[str, _Copy]) -> int:
        """Every pending copy in one bulk; how many sessions were written."""
        if taken:
            _write_copies(taken)
        return len(taken)


writer = DurableWriter()


def flush_durable() -> int:
    """Write this process's pending durable copies now (WORKBENCH_DURABLE_INTERVAL > 0); how many sessions.
    Runs at exit by itself; call it from a gunicorn ``worker_exit`` hook (docs/workbench.md, "durable saves")."""
    return writer.flush()


def _flush_before_fallback(session_id: str | None = None) -> None:
    """This process is about to use workbench_active itself (Redis unreachable; or a recovery check of
    ``session_id``, then only if that session's copy is pending): the copies it owes go first, so a session
    it saved before the outage is found there. A pending ended mark needs no flush before a recovery check:
    that check reads Redis's ended record (a load of a session this process just ended costs no bulk)."""
    pending = writer._pending
    mine = pending.get(session_id) if session_id is not None else None
    if pending and (session_id is None or (mine is not None and not mine.ended)):
        writer.flush_or_log("hotcache.workbench: durable copies not written before the fallback")


atexit.register(writer.flush_or_log, "hotcache.workbench: durable copies not written at exit")
