"""Bringing Redis in line with workbench_active after an outage: one session at a time (under the fence, on a
miss, on a tampered record) and every outage copy in a persister run, which then lowers the fence.
See docs/workbench.md#recovery-after-an-outage.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from hotcache import clock, metering, signing
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import (
    BackendUnavailable,
    RedisUnavailable,
)
from hotcache.workbench._durable import _ended_mark, _flush_before_fallback
from hotcache.workbench._envelope import (
    _NONE,
    _Envelope,
    _envelope_from_doc,
    _Hot,
    _observed,
    _open_envelope,
    _open_hot,
    _read_envelopes,
    _remember,
    _tampered,
)
from hotcache.workbench._fence import _current_fence, _current_fences
from hotcache.workbench._layout import (
    _FALLBACK,
    _FORK,
    _LEGACY,
    _LOAD,
    _RECONCILE,
    _REDIS,
    _UNFENCE,
    FEATURE,
    _active,
    _bucket,
    _data_key,
    _fence_key,
    _gone_key,
    _index_key,
    _key_ttl,
    _walked,
)
from hotcache.workbench._results import PersistResult

log = logging.getLogger("hotcache.workbench")


def _migrate(session_id: str) -> _Hot | None:
    """A Redis miss: bring a session of the single-tag layout into its bucket, or one kept on MongoDB (outage or
    durable copy) back into Redis; None if none."""
    if _adopt_legacy(session_id):
        [observed] = _read_envelopes([session_id])
        current = _open_envelope(session_id, observed)
        tampered = bool(observed) and current is None
        return _reconcile(session_id, observed, current, tampered=tampered)
    return _reconcile(session_id, _NONE)


def _adopt_legacy(session_id: str) -> bool:
    """Move a live session from the single-tag layout ``{workbench:s}`` into its bucket; True if one was moved.

    Only when the sessions are spread (KEY_BUCKETS > 1) and the session's bucket holds nothing: the upgrade path
    of a deployment that changes KEY_BUCKETS (docs/operations/redis-cluster.md). Two round trips on a miss (DUMP,
    then RESTORE without REPLACE, so a session already in its bucket is never overwritten), a third to remove the
    old copy once the new one is in place. The envelope stays valid: it is sealed under the session id, not
    the bucket (_identity). Redis unreachable: False (the caller's MongoDB path goes on).
    """
    new = _data_key(session_id)
    old = _data_key(session_id, _LEGACY)
    if new == old:
        return False
    bucket = _bucket(session_id)

    def dump(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        pipe.dump(old)
        pipe.pttl(old)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies

    def restore(r: Any, payload: bytes, ttl_ms: int) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        pipe.restore(new, ttl_ms, payload)
        pipe.zadd(_index_key(bucket), {session_id: clock.time()})
        pipe.expire(_index_key(bucket), _key_ttl() * 2)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies

    def forget(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        pipe.delete(old)
        pipe.zrem(_index_key(_LEGACY), session_id)
        replies: list[Any] = pipe.execute()
        return replies

    try:
        payload, pttl = redis_backend.call(FEATURE, dump)
        if not isinstance(payload, bytes):
            return False
        ttl_ms = int(pttl) if isinstance(pttl, int) and pttl > 0 else _key_ttl() * 1000
        restored = redis_backend.call(FEATURE, lambda r: restore(r, payload, ttl_ms))[0]
        if isinstance(restored, Exception) and "BUSYKEY" not in str(restored):
            return False  # not moved (the old copy stays, the persister's walk of the old layout still sees it)
        redis_backend.call(FEATURE, forget)
    except RedisUnavailable:
        return False
    metering.event(FEATURE, "adopted")
    return True


def _reconcile_args(
    action: str, fence: str, observed: bytes, doc: Mapping[str, Any], session_id: str, gone: int | None = None
) -> list[Any]:
    """``gone``: how many ended records of the session Python read before deciding a 'put' (None: not read)."""
    envelope, state = _NONE, ""
    if action == "put":
        envelope, state = _envelope_from_doc(session_id, doc).raw, doc["state"]
    ended = "" if gone is None else gone
    return [action, fence, observed, envelope, state, repr(clock.time()), _key_ttl(), session_id, ended]


def _ended_records(session_id: str) -> tuple[int, list[_Envelope]]:
    """The session's ended records in Redis (wb_end.lua): how many, and the envelopes ended (one round trip)."""
    [records] = _ended_records_of([session_id])
    return records


def _ended_records_of(session_ids: list[str]) -> list[tuple[int, list[_Envelope]]]:
    """Each session's ended records in Redis (wb_end.lua): how many, and the envelopes ended, verified (one
    pipeline). A record that fails verification counts (so the script's check holds) but ends nothing."""
    keys_ = [_gone_key(session_id) for session_id in session_ids]

    def read(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for key in keys_:
            pipe.hvals(key)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies

    records: list[tuple[int, list[_Envelope]]] = []
    for session_id, key, raw in zip(session_ids, keys_, redis_backend.call(FEATURE, read), strict=True):
        if isinstance(raw, Exception):
            signing.tampered(FEATURE, key, "is not a hash (ended records): none are trusted")
            records.append((0, []))
            continue
        records.append((len(raw), [e for e in (_open_envelope(session_id, v) for v in raw) if e is not None]))
    return records


def _ended_copy(session_id: str, doc: Mapping[str, Any], ended: list[_Envelope]) -> _Envelope | None:
    """The end that makes durable copy ``doc`` stale: its incarnation ended in Redis at its version or later
    (the copy was written late by a process that saved before the end). None: the copy is not ended."""
    version = int(doc["version"])
    for e in ended:
        if e.token == doc["token"] and e.version >= version:
            return e
    return None


def _mark_ended(session_id: str, doc: Mapping[str, Any], ended: _Envelope) -> None:
    """Turn a stale copy (durable, or an outage copy of the incarnation Redis ended since) into its ended mark
    (as the ending process's writer does for a durable copy), so no later look reads it again; the persister
    removes it with the session's other copies."""
    mark = _ended_mark(session_id, ended)
    flt = {**mark.filter, "origin": doc.get("origin")}
    try:
        _active().update_one(flt, {"$set": {**mark.update["$set"], "origin": _REDIS}})
    except BackendUnavailable:
        log.warning("hotcache.workbench: the durable copy of ended %s stays until the persister removes it", doc["_id"])


def _plan(
    doc: Mapping[str, Any] | None, current: _Envelope | None, observed: bytes, tampered: bool
) -> list[tuple[str, bytes, Mapping[str, Any]]]:
    """The recovery rule: which actions (each applied only if Redis still holds ``observed``) bring Redis's copy
    (``current``, verified; or none; or a ``tampered`` one) in line with the MongoDB document.

    - a tampered copy is absent: MongoDB's document replaces it, or it is dropped;
    - a tombstone of the incarnation Redis holds (same token, version at least Redis's): drop it in Redis;
    - a document that remembers an ended incarnation (gone_token) Redis still holds: drop that first;
    - an outage ("fallback") or durable document of the same incarnation with a NEWER version, or any
      document when Redis has none: put it into Redis;
    - otherwise Redis is current (it is never overwritten by an older version or another incarnation).
    """
    if doc is None:
        return [("drop", observed, {})] if tampered else [("mark", observed, {})]
    if doc.get("ended"):
        holds = current is not None and current.token == doc["token"] and current.version <= int(doc["version"])
        return [("drop" if tampered or holds else "mark", observed, doc)]
    actions: list[tuple[str, bytes, Mapping[str, Any]]] = []
    gone = doc.get("gone_token")
    if current is not None and gone and current.token == gone and current.version <= int(doc.get("gone_version", 0)):
        actions.append(("drop", observed, doc))
        current, observed = None, _NONE
    if tampered or current is None or (current.token == doc["token"] and int(doc["version"]) > current.version):
        actions.append(("put", observed, doc))
    else:
        actions.append(("mark", observed, doc))
    return actions


def _reconcile(
    session_id: str,
    observed: bytes,
    current: _Envelope | None = None,
    *,
    tampered: bool = False,
    hot: _Hot | None = None,
) -> _Hot | None:
    """Compare one session's Redis copy with workbench_active and fix Redis; the session as Redis now holds it.

    ``observed``: the envelope Redis held when looked at (b'' none); ``current``: it, verified; ``tampered``:
    it failed verification (absent: MongoDB's copy replaces it, or it is deleted); ``hot``: the verified
    session, returned as is when nothing changes. One MongoDB read and one Redis round trip per action, plus
    one to read the result.
    """
    _flush_before_fallback(session_id)
    try:
        doc = _active().find_one({"_id": session_id})
    except BackendUnavailable:
        log.warning("hotcache.workbench: MongoDB unavailable while checking %s for an outage copy", session_id)
        return hot
    if current is None and not tampered and (doc is None or (doc.get("ended") and doc.get("origin") == _REDIS)):
        return None  # no session anywhere (an ended mark stays for the persister: it refuses late copies)
    bucket = _bucket(session_id)
    fence = _current_fence(bucket)
    keys_ = [_data_key(session_id), _index_key(bucket)]
    plan = _plan(doc, current, observed, tampered)
    gone: int | None = None
    if doc is not None and any(a == "put" for a, _, _ in plan):
        # A copy about to be put back: not if Redis ended its incarnation since (a durable copy written late by
        # a process that saved before the end, or the end's mark still on its way; an outage copy of a version
        # another process then ended in Redis, see _ended_outage_copies). wb_reconcile re-checks.
        try:
            gone, ended = _ended_records(session_id)
        except RedisUnavailable:
            return _Hot(_envelope_from_doc(session_id, doc), doc["state"])  # as below: Redis went away
        end = _ended_copy(session_id, doc, ended)
        if end is not None:
            _mark_ended(session_id, doc, end)
            if current is None and not tampered:
                _remember(session_id, None)
                return None  # Redis holds nothing of it: the session stays ended
            plan, doc, gone = _plan(None, current, observed, tampered), None, None
    changed = False
    script_keys = [*keys_, _gone_key(session_id)]
    for action, seen, src in plan:
        args = _reconcile_args(action, fence, seen, src, session_id, gone)
        try:
            call = functools.partial(_RECONCILE, keys=script_keys, args=args)
            changed = bool(redis_backend.call(FEATURE, call)) or changed
        except RedisUnavailable:
            if doc is None or doc.get("ended"):
                return hot
            return _Hot(_envelope_from_doc(session_id, doc), doc["state"])
    if doc is not None:
        _settle(doc, keys_)
    if not changed and hot is not None:
        _remember(session_id, hot.envelope)
        return hot
    now = clock.time()
    load_args = [repr(now), _key_ttl(), session_id, "", 1]
    row = redis_backend.call(FEATURE, lambda r: _LOAD(r, [*keys_, _fence_key(bucket)], load_args))
    result = _open_hot(session_id, row[0], _observed(row[1])) if row else None
    if row and result is None:
        _tampered(session_id, _observed(row[1]))  # written again since: absent, left for the next look
    _remember(session_id, result.envelope if result is not None else None)
    return result


def _redis_envelope(session_id: str) -> _Envelope | None:
    """The session's envelope in Redis, verified (None: none, or not trusted). One round trip."""
    [observed] = _read_envelopes([session_id])
    return _open_envelope(session_id, observed)


def _settle(doc: Mapping[str, Any], keys_: list[str]) -> None:
    """After Redis took (or refused) the MongoDB copy: it is no longer an outage copy."""
    flt = {"_id": doc["_id"], "version": doc["version"], "token": doc["token"], "origin": doc.get("origin")}
    try:
        if doc.get("ended") and doc.get("origin") == _REDIS:
            return  # an ended mark (_durable.py) stays until the persister: it refuses late copies
        if doc.get("ended"):
            _active().delete_one(flt)
        elif doc.get("origin") == _FALLBACK:
            held = _redis_envelope(doc["_id"])
            same = held is not None and held.token == doc["token"] and held.version >= int(doc["version"])
            if same and not hotcache_settings.WORKBENCH_DURABLE_SAVES:
                _active().delete_one(flt)  # Redis has it: without durable saves MongoDB keeps no copy
            else:
                origin = _REDIS if same else _FORK
                unset = {"gone_token": "", "gone_version": ""}
                _active().update_one(flt, {"$set": {"origin": origin, "from_redis": same}, "$unset": unset})
    except (BackendUnavailable, RedisUnavailable):
        log.warning("hotcache.workbench: could not settle the outage copy of %s; the persister will", doc["_id"])


# An outage copy, the actions planned for it, and Redis's copy as read: observed, verified, tampered.
_Planned = tuple[Mapping[str, Any], list[tuple[str, bytes, Mapping[str, Any]]], bytes, _Envelope | None, bool]


def _ended_outage_copies(plans: list[_Planned]) -> tuple[dict[str, int], set[str]]:
    """The persister's form of _reconcile's ended check, for a batch of outage copies to be put back: one
    pipeline of their ended records, only when the batch puts any back (never on a run without outage copies).

    An outage copy no newer than a version Redis ended since (another process ended the session in Redis
    before the one that wrote the copy raised its fence: a save whose reply was lost, a partial outage) is
    stale: it becomes the incarnation's ended mark, and Redis's copy is treated as if there were no document
    (``plans`` is updated in place), as _reconcile does on the request path. Returns the record counts read
    for the puts that stay (wb_reconcile refuses a put if an end ran since) and the ids whose copy was ended.
    """
    puts = [i for i, (_d, actions, _o, _c, _t) in enumerate(plans) if any(a == "put" for a, _, _ in actions)]
    if not puts:
        return {}, set()
    gone: dict[str, int] = {}
    ended: set[str] = set()
    records = _ended_records_of([plans[i][0]["_id"] for i in puts])
    for i, (count, ends) in zip(puts, records, strict=True):
        d, _actions, observed, current, tampered = plans[i]
        end = _ended_copy(d["_id"], d, ends)
        if end is None:
            gone[d["_id"]] = count
            continue
        _mark_ended(d["_id"], d, end)
        ended.add(d["_id"])
        rest = _plan(None, current, observed, tampered) if current is not None or tampered else []
        plans[i] = (d, rest, observed, current, tampered)
    return gone, ended


def _reconcile_active(result: PersistResult, limit: int, max_batches: int) -> None:
    """Recovery after a Redis outage: bring every outage copy (and tombstone) in workbench_active in line with
    Redis, then lower the fence if nobody raised it again meanwhile. Per batch: one MongoDB read, one Redis
    pipeline (two when it puts copies back: their ended records first), and the settle writes."""
    coll = _active()
    walked: list[str | None] = list(_walked())
    fences = _current_fences(walked)
    for _ in range(max_batches):
        docs = coll.find({"origin": _FALLBACK}, sort=[("last_seen", mongo.ASCENDING)], limit=limit)
        if not docs:
            break

        plans: list[_Planned] = []
        for d, observed in zip(docs, _read_envelopes([d["_id"] for d in docs]), strict=True):
            current = _open_envelope(d["_id"], observed)
            tampered = bool(observed) and current is None
            if tampered:
                _tampered(d["_id"], observed)
            plans.append((d, _plan(d, current, observed, tampered), observed, current, tampered))
        gone, ended = _ended_outage_copies(plans)

        def apply(r: Any, batch: list[_Planned] = plans, counts: dict[str, int] = gone) -> list[Any]:
            commands: list[tuple[Any, ...]] = []
            for d, actions, *_read in batch:
                for action, seen, src in actions:
                    # EVAL (not EVALSHA): no NOSCRIPT round trip to handle; a rare recovery path. Each sent once
                    # (send_commands: redis-py's cluster pipeline would re-send a batch whose reply timed out).
                    b = _bucket(d["_id"])
                    ks = [_data_key(d["_id"]), _index_key(b), _gone_key(d["_id"])]
                    args = _reconcile_args(action, fences.get(b, ""), seen, src, d["_id"], counts.get(d["_id"]))
                    commands.append(("EVAL", _RECONCILE.body, len(ks), *ks, *args))
            replies = [_RECONCILE.reply(raw) for raw in redis_backend.send_commands(r, commands)]
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return replies

        redis_backend.call(FEATURE, apply)
        for d in docs:
            _remember(d["_id"], None)
            if d["_id"] not in ended:
                _settle(d, [_data_key(d["_id"]), _index_key(_bucket(d["_id"]))])
        result.reconciled += len(docs)
        if len(docs) < limit:
            break
    else:
        return  # more left: keep the fence up for the next run
    up = [(_UNFENCE, [_fence_key(b)], [f]) for b, f in fences.items() if f]
    if up:
        redis_backend.call(FEATURE, lambda r: redis_backend.run_scripts(r, up))
