"""The durable copy of each Redis save in workbench_active, written off the request path: saves are coalesced
per session in this process (only the newest version is written) and written in one bulk per
WORKBENCH_DURABLE_INTERVAL by a daemon thread; 0 writes each copy on the request path. An end() in Redis
queues its session's *ended mark* in the same bulk (0 MongoDB operations on the request path).

Every copy is a version-guarded upsert, so a late, duplicate or out-of-order write never replaces a newer one.
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
from hotcache.exceptions import BackendUnavailable, DuplicateKey
from hotcache.periodic import PeriodicBuffer
from hotcache.workbench._archive import _copy_record, _write_history
from hotcache.workbench._envelope import _Envelope, _ts
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
    created: bool  # the save created this incarnation: it may replace another one's copy (kept in history)
    ended: bool = False  # end() ended this incarnation at envelope.version: the ended mark, not a copy


def _filter_and_update(session_id: str, envelope: _Envelope, text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The upsert of one copy. The filter matches the session's document only if it holds an older version
    (or a copy of another incarnation, which has left Redis); otherwise the upsert tries to insert on the
    existing _id and gets E11000: a newer version (or an outage copy) is already there, nothing to do.
    A copy that replaces another incarnation's ended mark is not ended itself (``ended`` unset), or the new
    session would be invisible during an outage (as the outage path does over a tombstone, _fallback.py)."""
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
    version, token = envelope.version, envelope.token
    flt = {"_id": session_id, "$or": [{"version": {"$lt": version}}, {"token": {"$ne": token}, "origin": _REDIS}]}
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


def _durable_write(
    session_id: str, envelope: _Envelope, text: str, *, created: bool = False, ended: bool = False
) -> None:
    """Copy one Redis save to workbench_active now: ONE conditional upsert that never replaces a newer version
    (``ended``: the ended mark instead).

    A save that ``created`` the session gets a replaced copy of another incarnation back (same single
    operation) and keeps it in history.
    """
    flt, update = _filter_and_update(session_id, envelope, text)
    try:
        if ended:
            before = None
            mark = _ended_mark(session_id, envelope)
            _active().update_one(mark.filter, mark.update, upsert=True)
        elif created:
            before = _active().find_one_and_update(flt, update, upsert=True, return_new=False)
        else:
            before = None
            _active().update_one(flt, update, upsert=True)
    except DuplicateKey:
        return  # a newer version is already there
    except BackendUnavailable:
        _failed(1)
        return
    _succeeded()
    if before is not None and before.get("token") != envelope.token and not before.get("ended"):
        _keep_replaced(session_id, before)


def _write_copies(copies: Mapping[str, _Copy]) -> None:
    """Write pending copies and ended marks in ONE unordered bulk (E11000 rows: a newer version, or the ended
    mark, is already there).

    A creation's row inserts only where the id holds no document; an id that holds one (E11000 on that row:
    another incarnation's copy, which left Redis, or a newer copy of this one) takes one read and one more
    bulk for those rows only: a replaced incarnation's copy is kept in history as abandoned, as a lone
    creation's upsert does. So a flush is ONE MongoDB operation unless an id is reused.
    """
    items = list(copies.items())
    try:
        ops = []
        for sid, c in items:
            if c.ended:
                ops.append(_ended_mark(sid, c.envelope))
            elif c.created:
                _, update = _filter_and_update(sid, c.envelope, c.text)
                only_new = {"_id": sid, "token": c.envelope.token, "version": {"$lt": c.envelope.version}}
                ops.append(mongo.Update(only_new, update, upsert=True))
            else:
                flt, update = _filter_and_update(sid, c.envelope, c.text)
                ops.append(mongo.Update(flt, update, upsert=True))
        done = _active().bulk(ops)
        reused = {items[i][0]: items[i][1] for i in done.duplicates if items[i][1].created and not items[i][1].ended}
        if reused:
            _replace_incarnations(reused)
    except BackendUnavailable:
        _failed(len(copies))
        return
    _succeeded()


def _replace_incarnations(copies: Mapping[str, _Copy]) -> None:
    """Creations whose id holds a document: the copies they replace (another incarnation's, which left Redis)
    go to history as abandoned, then the creations are written with the usual guard (one read, one bulk)."""
    for doc in _active().find({"_id": {"$in": list(copies)}, "origin": _REDIS}):
        if doc.get("token") != copies[doc["_id"]].envelope.token and not doc.get("ended"):
            _keep_replaced(doc["_id"], doc)
    ops = []
    for sid, c in copies.items():
        flt, update = _filter_and_update(sid, c.envelope, c.text)
        ops.append(mongo.Update(flt, update, upsert=True))
    _active().bulk(ops)


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

    def add(self, session_id: str, envelope: _Envelope, text: str, *, created: bool) -> None:
        """Copy this save: now (interval 0), else with the next write (replacing an older pending version)."""
        if _interval() <= 0:
            _durable_write(session_id, envelope, text, created=created)
            return
        with self._lock:
            old = self._pending.get(session_id)
            if old is not None and old.envelope.token == envelope.token:
                if old.envelope.version >= envelope.version:
                    return  # a newer save of this incarnation (or its ended mark) is already pending
                created = created or old.created  # the creation's replaced copy is still owed to history
            self._pending[session_id] = _Copy(envelope, text, created)
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
            self._pending[session_id] = _Copy(envelope, "", created=False, ended=True)
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
