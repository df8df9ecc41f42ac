"""The persister: claim -> write history -> ack, the sweep of idle outage copies, and the dry-run count. Each step
walks every bucket (hash tag) in one pipeline: one round trip on a single server, one per master on a cluster.
Run by the beat task hotcache.tasks.persist_workbench_sessions and manage.py persist_workbench.
See docs/workbench.md#persisting.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from hotcache import clock, metering, signing
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import (
    BackendUnavailable,
    MongoWriteError,
    RedisUnavailable,
)
from hotcache.workbench._archive import _copy_record, _history_record, _write_history
from hotcache.workbench._durable import _flush_before_fallback
from hotcache.workbench._envelope import (
    _ENDED_RECORD,
    _FOREIGN,
    _NONE,
    _Hot,
    _open_envelope,
    _open_hot,
    _read_envelopes,
    _tampered,
    _ts,
)
from hotcache.workbench._layout import (
    _ACK,
    _CLAIM,
    _LIVE,
    _QUEUE_TTL_FACTOR,
    _REDIS,
    _RELEASE,
    FEATURE,
    _active,
    _claims_key,
    _data_key,
    _ended_key,
    _ended_queue,
    _fence_key,
    _index_key,
    _owners_key,
    _walked,
)
from hotcache.workbench._recover import _reconcile_active
from hotcache.workbench._results import PersistResult

log = logging.getLogger("hotcache.workbench")


_MEMBER = re.compile(
    r"e:(?P<ended>[A-Za-z0-9_.@+\-]{1,64}):(?P<token>[A-Za-z0-9]{1,64})|i:(?P<idle>[A-Za-z0-9_.@+\-]{1,64})"
)


def _shares(limit: int, buckets: list[str]) -> dict[str, int]:
    """``limit`` split over ``buckets`` as evenly as whole numbers go (some get 0 when there are more buckets)."""
    base, extra = divmod(limit, len(buckets))
    return {b: base + (1 if i < extra else 0) for i, b in enumerate(buckets)}


def _claim(run_id: str, shares: dict[str, int]) -> dict[str, list[bytes]]:
    """Claim up to its share in each bucket (one pipeline of wb_claim.lua); the members claimed per bucket."""
    now = clock.time()
    ttl = int(hotcache_settings.WORKBENCH_ENDED_TTL) * _QUEUE_TTL_FACTOR
    idle_cutoff = now - float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER)
    stale_cutoff = now - float(hotcache_settings.WORKBENCH_CLAIM_TIMEOUT)
    buckets = [b for b, n in shares.items() if n > 0]
    calls = [
        (
            _CLAIM,
            [_index_key(b), _ended_queue(b), _claims_key(b), _owners_key(b)],
            [repr(now), repr(idle_cutoff), repr(stale_cutoff), run_id, shares[b], ttl],
        )
        for b in buckets
    ]
    replies = redis_backend.call(FEATURE, lambda r: redis_backend.run_scripts(r, calls))
    return {b: list(members) for b, members in zip(buckets, replies, strict=True)}


@dataclass(slots=True)
class _Claimed:
    bucket: str  # the hash tag it was claimed in
    member: bytes  # as queued (handed back to the scripts byte for byte)
    kind: str  # "e" ended | "i" idle | "x" not a member hotcache queues (dropped from the claims only)
    session_id: str
    key: str
    hot: _Hot | None = None  # the session read, verified
    closed: float = 0.0  # ended: when (from the sealed end record)
    observed: bytes = _NONE  # the envelope read: an idle session is deleted only if it still holds it
    tampered: bool = False


def _parse_member(member: bytes | str, bucket: str | None = None) -> _Claimed:
    b = bucket or _walked()[0]
    raw = member if isinstance(member, bytes) else member.encode("utf-8", "surrogatepass")
    match = _MEMBER.fullmatch(raw.decode("utf-8", "replace"))
    if match is None:
        return _Claimed(b, raw, "x", "", _index_key(b), tampered=True)
    if match["ended"]:
        return _Claimed(b, raw, "e", match["ended"], _ended_key(match["ended"], match["token"], b))
    return _Claimed(b, raw, "i", match["idle"], _data_key(match["idle"], b))


def _read(claimed: list[_Claimed]) -> None:
    """Read the claimed sessions, verified, and keep them alive while claimed (one pipeline)."""
    idle_ttl = int(hotcache_settings.WORKBENCH_IDLE_TIMEOUT)
    ended_ttl = int(hotcache_settings.WORKBENCH_ENDED_TTL)
    readable = [c for c in claimed if c.kind != "x"]
    if not readable:
        return

    def run(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for c in readable:
            pipe.hgetall(c.key)
            pipe.expire(c.key, ended_ttl if c.kind == "e" else idle_ttl)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies

    replies = redis_backend.call(FEATURE, run)
    for c, raw in zip(readable, replies[0::2], strict=True):
        if not raw and not isinstance(raw, Exception):
            continue  # gone (expired before any persister ran)
        fields = raw if isinstance(raw, dict) else {}
        c.observed = fields.get(b"m", _FOREIGN)
        hot = _open_hot(c.session_id, fields.get(b"s"), c.observed)
        end = None
        if hot is not None and c.kind == "e":
            end = signing.unseal_json(_ENDED_RECORD, c.key, fields.get(b"e"), required={"e": (int, float)})
        if hot is None or (c.kind == "e" and end is None):
            c.tampered = True
            why = "failed verification" if b"m" in fields else "is not a session record hotcache wrote"
            signing.tampered(FEATURE, c.key, why)
            continue
        c.hot = hot
        c.closed = float(end["e"]) if end is not None else hot.envelope.updated


def _record_for(c: _Claimed) -> dict[str, Any]:
    assert c.hot is not None
    envelope = c.hot.envelope
    return _history_record(
        session_id=c.session_id,
        token=envelope.token,
        text=c.hot.text,
        version=envelope.version,
        owner=envelope.owner,
        created=_ts(envelope.created),
        updated=_ts(envelope.updated),
        closed=_ts(c.closed),
        reason="ended" if c.kind == "e" else "idle",
    )


def _ack(run_id: str, claimed: list[_Claimed]) -> tuple[int, int, list[int]]:
    """Ack the members in their buckets (one pipeline of wb_ack.lua); positions are indexes into ``claimed``."""
    by_bucket: dict[str, list[int]] = {}
    for i, c in enumerate(claimed):
        by_bucket.setdefault(c.bucket, []).append(i)
    calls = []
    for b, positions in by_bucket.items():
        keys_ = [_index_key(b), _claims_key(b), _owners_key(b)]
        args: list[Any] = [run_id]
        for i in positions:
            keys_.append(claimed[i].key)
            args += [claimed[i].member, claimed[i].kind, claimed[i].session_id, claimed[i].observed]
        calls.append((_ACK, keys_, args))
    replies = redis_backend.call(FEATURE, lambda r: redis_backend.run_scripts(r, calls))
    acked = kept = 0
    done: list[int] = []
    for positions, (n_acked, n_kept, acked_at) in zip(by_bucket.values(), replies, strict=True):
        acked, kept = acked + int(n_acked), kept + int(n_kept)
        done += [positions[int(j) - 1] for j in acked_at]
    return acked, kept, sorted(done)


def _drop_durable_copies(claimed: list[_Claimed], positions: list[int]) -> None:
    """Remove the durable copies (and ended marks) of sessions that left Redis for history (one MongoDB op per
    batch).

    Only a durable copy ("redis" origin) of that incarnation at that version or older: an outage copy
    that is newer stays for the recovery. If this fails, the idle sweep removes them later (history is
    keyed, so nothing is written twice). A copy written later still (its process saved before the end and
    wrote after this) is never brought back (Redis's ended record) and the idle sweep removes it.
    """
    if not hotcache_settings.WORKBENCH_DURABLE_SAVES:
        return
    gone = [(claimed[i].session_id, claimed[i].hot) for i in positions if claimed[i].kind in ("i", "e")]
    envelopes = [(session_id, hot.envelope) for session_id, hot in gone if hot is not None]
    if not envelopes:
        return
    flt = {
        "$or": [
            {"_id": session_id, "token": e.token, "version": {"$lte": e.version}, "origin": _REDIS}
            for session_id, e in envelopes
        ]
    }
    try:
        _active().delete_many(flt)
    except BackendUnavailable:
        log.warning("hotcache.workbench: durable copies of %d persisted sessions stay for the sweep", len(gone))


def _release(run_id: str, claimed: dict[str, list[bytes]]) -> None:
    calls = [(_RELEASE, [_claims_key(b), _owners_key(b)], [run_id, *m]) for b, m in claimed.items() if m]
    try:
        redis_backend.call(FEATURE, lambda r: redis_backend.run_scripts(r, calls))
    except RedisUnavailable:
        pass  # the claims go stale after WORKBENCH_CLAIM_TIMEOUT instead


def _persist_batch(run_id: str, result: PersistResult, limit: int, active: list[str]) -> tuple[int, list[str]]:
    """Claim, write and ack one batch over the ``active`` buckets; returns how many members were claimed and the
    buckets that may hold more (a bucket that gave less than its share is empty for this run)."""
    shares = _shares(limit, active)
    by_bucket = _claim(run_id, shares)
    still = [b for b in active if shares[b] == 0 or len(by_bucket.get(b, ())) >= shares[b]]
    members = [(b, m) for b, ms in by_bucket.items() for m in ms]
    if not members:
        return 0, still
    try:
        claimed = [_parse_member(m, b) for b, m in members]
        _read(claimed)
        present = [c for c in claimed if c.hot is not None]
        records = [_record_for(c) for c in present]
        duplicates = _write_history(records)
        result.batches += 1
        _acked, kept, done = _ack(run_id, claimed)
    except BaseException:
        _release(run_id, by_bucket)
        raise
    _drop_durable_copies(claimed, done)
    for c in claimed:
        if c.kind == "x":
            signing.tampered(FEATURE, _claims_key(c.bucket), "held a member hotcache did not queue")
    result.tampered += sum(1 for c in claimed if c.tampered)
    result.missing += sum(1 for c in claimed if c.hot is None and not c.tampered)
    result.kept += kept
    for i, c in enumerate(present):
        if i in duplicates:
            result.already += 1
        elif c.kind == "e":
            result.ended += 1
        else:
            result.idle += 1
    return len(members), still


def _sweep_active(result: PersistResult, limit: int, max_batches: int) -> None:
    """Move sessions idle in workbench_active (saved there during a Redis outage) into history, and remove
    ended marks as old (one that landed after the persister removed its session's copies)."""
    coll = _active()
    cutoff = clock.utcnow() - dt.timedelta(seconds=float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER))
    if hotcache_settings.WORKBENCH_DURABLE_SAVES:
        coll.delete_many({"ended": True, "origin": _REDIS, "last_seen": {"$lt": cutoff}})
    for _ in range(max_batches):
        found = coll.find({"last_seen": {"$lt": cutoff}, **_LIVE}, sort=[("last_seen", mongo.ASCENDING)], limit=limit)
        if not found:
            return
        # A document whose incarnation Redis holds is Redis's to persist (its durable copy, or an outage
        # copy already brought back): skip it, and touch it so the next batch moves on.
        live = _live_in_redis(found)
        docs = [d for d in found if d["_id"] not in live]
        if live:
            touch = {"$set": {"last_seen": clock.utcnow()}}
            coll.bulk([mongo.Update({"_id": i}, touch, upsert=False) for i in sorted(live)], ordered=False)
        if not docs:
            if len(found) < limit:
                return
            continue
        records = [_copy_record(d, closed=_ts(d["last_seen"]), reason="idle") for d in docs]
        duplicates = _write_history(records)
        result.batches += 1
        result.from_fallback += len(records) - len(duplicates)
        result.already += len(duplicates)
        # Only the exact version and last-seen written leave: a session used meanwhile stays active.
        coll.delete_many(
            {"$or": [{"_id": d["_id"], "version": d["version"], "last_seen": d["last_seen"]} for d in docs]}
        )
        if len(found) < limit:
            return


def _live_in_redis(docs: list[dict[str, Any]]) -> set[str]:
    """Ids whose document's incarnation (token) Redis holds now, verified (one pipeline). Redis down: durable
    copies count as live (they are Redis's; the next run decides), outage copies as not."""

    try:
        replies = _read_envelopes([d["_id"] for d in docs])
    except RedisUnavailable:
        return {d["_id"] for d in docs if d.get("origin") == _REDIS}
    live = set()
    for d, observed in zip(docs, replies, strict=True):
        held = _open_envelope(d["_id"], observed)
        if observed and held is None:
            _tampered(d["_id"], observed)  # not Redis's copy: the document is the session
        elif held is not None and held.token == d["token"]:
            live.add(d["_id"])
    return live


def persist(*, dry_run: bool = False, limit: int | None = None) -> PersistResult:
    """Move ended sessions, and sessions idle past WORKBENCH_PERSIST_IDLE_AFTER, into MongoDB history.

    Safe to run concurrently and to rerun after a crash (claim -> bulk write -> ack; history is keyed).
    ``limit`` caps the sessions handled in this run (default: all that are due). ``dry_run`` only counts.
    """
    result = PersistResult(dry_run=dry_run)
    if dry_run:
        result.pending = _pending()
        return result
    _flush_before_fallback()  # the durable copies this process owes are what the run reads for tampered sessions
    batch = int(hotcache_settings.WORKBENCH_PERSIST_BATCH)
    remaining = limit if limit is not None else None
    run_id = uuid.uuid4().hex
    before_claims = _stale_claims()
    try:
        # Outage copies first: an idle Redis session must not be persisted over a newer outage version.
        _reconcile_active(result, batch, max_batches=max(1, (limit or 10**9) // batch + 1))
        active = list(_walked())
        while active and (remaining is None or remaining > 0):
            size = batch if remaining is None else min(batch, remaining)
            n, active = _persist_batch(run_id, result, size, active)
            if remaining is not None:
                remaining -= n
    except RedisUnavailable as exc:
        result.errors.append(f"redis: {exc}")
        # Down, or a shared key retyped by someone else: the next run works again once it is deleted.
        result.tampered += _repair_shared_keys()
    except (BackendUnavailable, MongoWriteError) as exc:
        # A write MongoDB refused (not a duplicate key) is a store failure like an outage: the batch was
        # released, the rest stays queued, and the run says so (the command exits non-zero).
        result.errors.append(f"mongodb: {exc} (claimed sessions stay queued for the next run)")
    result.recovered = before_claims
    if not any(e.startswith("mongodb") for e in result.errors):
        try:
            _sweep_active(result, batch, max_batches=max(1, (limit or 10**9) // batch + 1))
        except (BackendUnavailable, MongoWriteError) as exc:
            result.errors.append(f"mongodb: {exc}")
    if result.persisted:
        metering.event(FEATURE, "persisted", result.persisted)
    for message in result.errors:
        log.warning("hotcache.workbench: persist incomplete: %s", message)
    return result


def _stale_claims() -> int:
    cutoff = clock.time() - float(hotcache_settings.WORKBENCH_CLAIM_TIMEOUT)

    def count(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for b in _walked():
            pipe.zcount(_claims_key(b), "-inf", repr(cutoff))
        replies: list[Any] = pipe.execute()
        return replies

    try:
        return sum(int(n) for n in redis_backend.call(FEATURE, count))
    except RedisUnavailable:
        return 0


def _repair_shared_keys() -> int:
    """Delete the keys every session shares if they hold another Redis type than hotcache writes there
    (tampered): each script touching one fails, sending every session to the fallback and failing every
    persister run. Run after a run failed on Redis; returns how many keys were deleted (each counted)."""
    expected: dict[str, bytes] = {}
    for b in _walked():
        expected |= {
            _index_key(b): b"zset",
            _ended_queue(b): b"zset",
            _claims_key(b): b"zset",
            _owners_key(b): b"hash",
            _fence_key(b): b"string",
        }

    def types(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for key in expected:
            pipe.type(key)
        replies: list[Any] = pipe.execute()
        return replies

    try:
        found = redis_backend.call(FEATURE, types)
        wrong = [key for (key, kind), got in zip(expected.items(), found, strict=True) if got not in (b"none", kind)]
        if wrong:
            # No script can turn a key of the wrong type into the right one: nothing is raced here.
            redis_backend.call(FEATURE, lambda r: r.delete(*wrong))
    except RedisUnavailable:
        return 0
    for key in wrong:
        signing.tampered(FEATURE, key, f"was not a {expected[key].decode()} (deleted)")
    return len(wrong)


def _pending() -> dict[str, int]:
    """What a run would take now (read-only; one pipeline plus one MongoDB count)."""
    now = clock.time()
    idle_cutoff = now - float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER)
    stale_cutoff = now - float(hotcache_settings.WORKBENCH_CLAIM_TIMEOUT)
    out: dict[str, int] = {}

    def run(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for b in _walked():
            pipe.zcard(_ended_queue(b))
            pipe.zcount(_index_key(b), "-inf", repr(idle_cutoff))
            pipe.zcount(_claims_key(b), "-inf", repr(stale_cutoff))
        replies: list[Any] = pipe.execute()
        return replies

    try:
        replies = [int(n) for n in redis_backend.call(FEATURE, run)]
        out.update(ended=sum(replies[0::3]), idle=sum(replies[1::3]), stale_claims=sum(replies[2::3]))
    except RedisUnavailable:
        out["redis_unavailable"] = 1
    try:
        cutoff = clock.utcnow() - dt.timedelta(seconds=float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER))
        out["fallback_idle"] = _active().count({"last_seen": {"$lt": cutoff}})
    except BackendUnavailable:
        out["mongodb_unavailable"] = 1
    return out
