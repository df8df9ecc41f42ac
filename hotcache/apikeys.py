"""API keys: hashed at rest, validated and counted in one Redis round trip, daily limits exact under concurrency.

A key is ``<prefix>.<secret>``: 8 characters of public prefix (shown in lists and logs) and 43
characters (256 bits) of secret from ``secrets``. Only its SHA-256 is stored: a fast hash is right for
a machine-made 256-bit secret (nobody can guess it, so a slow KDF would only make each check a CPU
cost an attacker can trigger). Key records live in MongoDB (``api_keys``, unique index on
``key_sha256``); Redis caches them under the digest and keeps a counter per key per UTC day.

Warm path: one Lua script reads the cached record, checks revocation and expiry, compares today's
count with the limit and INCRs only when under it: 1 round trip, 0 MongoDB operations, and with N
concurrent calls against a limit L exactly L are allowed. Cold path: one indexed MongoDB query, then
the same script caches the record and counts. Revocation writes a tombstone over the cached record
that a concurrent cold load cannot overwrite, so it holds on the next call in every process.

Redis down: the record is read from MongoDB (one indexed query) and the use is counted there with a
conditional ``$inc`` (``fallback + redis + doubt < limit``), so limits stay enforced. The day's total is
``fallback`` (counted on MongoDB) plus ``redis`` (Redis's counter, copied by sync_usage()). When
Redis answers again the MongoDB count is pushed into a per-day ``base`` key the script adds to its
counter, so both stores' counts combine (in the process that counted on MongoDB at its next check, in
every process at the next sync_usage()). A key revoked while Redis is unreachable is refused at once
on MongoDB; its cached record is overwritten by the revoking process's next check or by the next
sync_usage(), whichever comes first (at worst after APIKEY_CACHE_TTL).

Tolerance: during an outage MongoDB knows Redis's count only as of the last sync_usage(), so up to
the uses counted on Redis since then can be allowed again.

Lost replies, exactly once: a check script may reach Redis and be applied while its reply is lost
(RedisUnavailable.maybe_applied: Redis stopped between doing and answering, a dropped connection, a read
timeout). Counting it on MongoDB as well would count one use twice. So every check carries a sequence
number (per process, increasing) and the script records, when it INCRs, ``writer -> "<seq>:<time>"`` in
the key's token hash ``{apikeys:<tag>}:tok`` (writer = process nonce:thread id; same hash tag, so
Cluster-safe; TTL _TOKEN_TTL, refreshed by each check; when a new writer's field makes the hash exceed 32
fields, fields silent for longer than the TTL are pruned: memory is one field per key per writer active in
the last day). Such a request is decided on MongoDB without counting it there (_check_in_doubt): the key
is validated and, with a limit, one use is reserved by a conditional ``$inc`` of the day document's
``doubt`` field (``fallback + redis + doubt < limit``), which every fallback sees for the limit and no
total includes. The doubt (writer, seq, key, day, allowed or refused) is kept in process memory and
settled before this process's next check script, by whichever thread runs it (apikey_resolve.lua,
atomic and idempotent, so its own lost reply is harmless): counted by Redis and allowed -> nothing;
not counted and allowed -> INCR now (no limit check: the request was served); counted by Redis but
refused (over the limit, invalid key, MongoDB down too) -> DECR. It then stores the sequence, so the
lost script arriving late is refused as stale. The writer's field cannot have moved on meanwhile:
each writer resolves before its next check. The reservation is then taken back (retried by later checks
if MongoDB fails). Limit bound: doubts add nothing to the fallback's tolerance above (they are reserved
where the fallback decides). Left open: a doubt lives in memory until Redis answers; a process exiting
first leaves an allowed use that Redis did not apply uncounted (at most one per thread) and its
reservation in place (refuses one use more that day); a doubt resolved after _TOKEN_TTL (the field
expired) is treated as not applied.
If Redis itself loses its data, uses it counted since the last sync are forgotten for the limit.
Both Redis and MongoDB down: check() raises MongoUnavailable; require_api_key answers 503 (fail closed).

Sync cost: sync_usage() must not read every key's counters (10,000 keys x 2 days every 10 minutes would be
~2.9 million commands a day against a budget of 10,000). Redis keeps a per-UTC-day index of the keys used that
day, ``{apikeys:touched}:<YYYYMMDD>`` (a set of ``<key_id>:<tag>``, TTL as the counters), and the sync reads
only the index and the counters it names: its cost grows with the keys used in its window, not with all keys.
The index is written when the check script creates the day's counter (INCR returned 1), so once per key per
day; every other check is still the single script call. The index cannot share a key's hash tag (it holds
many keys), so on Redis Cluster the script may not touch it: the script reports "first use today" and the
caller sends SADD + EXPIRE in a second round trip, on that one call a day only. Rejected alternatives: one
index per tag slot (keys sharded into S buckets, each bucket's index in the bucket's slot) lets the script
write it but makes every sync read S x days sets whether used or not, and would move every existing key;
touching an undeclared key in the script breaks on Cluster. Trade-off of the second round trip: if it fails
(Redis unreachable) the entry is kept in-process and written by the next successful check or reconcile; if
the process dies between the two round trips, that key-day stays out of the index, so its Redis count
reaches the MongoDB history only if the key is also counted on MongoDB (usage() and list_keys() read the
live counter directly, so they stay right within retention). A past day's index is deleted by the first
successful sync at least _CLOSE_GRACE after that day ended (its counters no longer change), so a steady
state sync reads today's index and the counters of today's keys only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import itertools
import json
import logging
import math
import os
import re
import secrets
import string
import threading
from collections.abc import Callable
from typing import Any

from hotcache import clock, keys, metering
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import BackendUnavailable, DuplicateKey, HotcacheError, RedisUnavailable

__all__ = [
    "InvalidKey",
    "KeyInfo",
    "KeyNotFound",
    "NewKey",
    "SyncResult",
    "Usage",
    "check",
    "create",
    "get",
    "list_keys",
    "require_api_key",
    "revoke",
    "sync_usage",
    "usage",
    "usage_many",
]

log = logging.getLogger("hotcache.apikeys")

FEATURE = "apikeys"
KEYS_COLLECTION = "api_keys"
USAGE_COLLECTION = "api_key_usage"
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_PREFIX_LEN = 8
_SECRET_BYTES = 32  # 256 bits; token_urlsafe gives 43 characters
_KEY_RE = re.compile(r"[a-z0-9]{8}\.[A-Za-z0-9_\-]{43}", re.ASCII)
_MAX_HEADER = 200  # longer header values are rejected before any parsing
_CHECK = redis_backend.Script("apikey_check")
_BASE = redis_backend.Script("apikey_base")
_RESOLVE = redis_backend.Script("apikey_resolve")
_TOKEN_TTL = 86400  # seconds a writer's last-counted sequence stays in a key's token hash after its last check
_CLOSE_GRACE = 3600  # seconds after a UTC day ends before the sync deletes that day's touched index
_SYNC_CHUNK = 2000  # GETs per pipeline in sync_usage()
_SSCAN_COUNT = 1000


class InvalidKey(HotcacheError, ValueError):
    """The API key is malformed, unknown, revoked or expired (the message never says which; the log does)."""

    def __init__(self) -> None:
        super().__init__("invalid API key")


class KeyNotFound(HotcacheError, LookupError):
    """No API key has this key_id."""


@dataclasses.dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    raw_key: str  # shown once; hotcache keeps only its SHA-256

    def __repr__(self) -> str:  # keep the secret out of tracebacks and logs
        return f"NewKey(key_id={self.key_id!r}, raw_key='{self.raw_key[:_PREFIX_LEN]}.***')"


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    allowed: bool
    key_id: str
    owner: str
    used_today: int  # uses counted today, including this one when allowed
    limit: int | None
    remaining: int | None
    reset_at: dt.datetime  # next UTC midnight: when the daily count starts again


@dataclasses.dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    prefix: str
    owner: str
    name: str
    daily_limit: int | None
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    used_today: int


@dataclasses.dataclass(frozen=True, slots=True)
class SyncResult:
    keys: int  # key records considered
    days: int
    written: int  # (key, day) totals written to MongoDB
    bases_pushed: int  # MongoDB-counted totals pushed back into Redis
    redis_available: bool


# --- stores --------------------------------------------------------------------------------------


def _create_key_indexes(coll: mongo.Collection) -> None:
    coll.create_index([("key_sha256", mongo.ASCENDING)], unique=True, name="key_sha256_unique")
    coll.create_index([("owner", mongo.ASCENDING)], name="owner")
    # sync_usage() re-sends tombstones for keys revoked in its window: a range query on this index.
    coll.create_index([("revoked_at", mongo.ASCENDING)], name="revoked_at")


def _create_usage_indexes(coll: mongo.Collection) -> None:
    coll.create_index([("key_id", mongo.ASCENDING), ("day", mongo.ASCENDING)], unique=True, name="key_day")
    coll.create_index([("day", mongo.ASCENDING)], name="day")


def _keys_coll() -> mongo.Collection:
    return mongo.ensure_indexes(KEYS_COLLECTION, feature=FEATURE, create=_create_key_indexes)


def _usage_coll() -> mongo.Collection:
    return mongo.ensure_indexes(USAGE_COLLECTION, feature=FEATURE, create=_create_usage_indexes)


def _digest(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("ascii")).hexdigest()


def _tag(digest: str) -> str:
    # 128 bits of the digest name the key's Redis keys; the full digest is compared in the record.
    return digest[:32]


def _meta_key(tag: str) -> str:
    return keys.tagged(FEATURE, tag, "meta")


def _use_key(tag: str, day: dt.date) -> str:
    return keys.tagged(FEATURE, tag, "use", day.strftime("%Y%m%d"))


def _base_key(tag: str, day: dt.date) -> str:
    return keys.tagged(FEATURE, tag, "base", day.strftime("%Y%m%d"))


def _token_key(tag: str) -> str:
    # writer -> "<seq>:<time>[:u]": the last check each writer (process nonce:thread) counted on this key.
    return keys.tagged(FEATURE, tag, "tok")


def _touched_key(day: dt.date) -> str:
    # One set per UTC day of the keys counted on Redis that day (members "<key_id>:<tag>"); its own slot.
    return keys.tagged(FEATURE, "touched", day.strftime("%Y%m%d"))


def _counter_ttl() -> int:
    return int(hotcache_settings.APIKEY_USAGE_RETENTION_DAYS) * 86400


def _day_name(day: dt.date) -> str:
    return day.isoformat()


def _next_midnight(now: dt.datetime) -> dt.datetime:
    return dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def _record_json(doc: dict[str, Any]) -> str:
    exp = doc.get("expires_at")
    return json.dumps(
        {
            "id": doc["key_id"],
            "owner": doc["owner"],
            "limit": doc.get("daily_limit"),
            "exp": exp.timestamp() if exp else None,
            "h": doc["key_sha256"],
        },
        separators=(",", ":"),
    )


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


# --- create / revoke / read ----------------------------------------------------------------------


def create(
    owner: str | int,
    name: str = "",
    daily_limit: int | None = None,
    expires_at: dt.datetime | None = None,
) -> NewKey:
    """Make a key for ``owner``; the raw key is in the result only (store it now: it cannot be shown again)."""
    if daily_limit is not None and (
        not isinstance(daily_limit, int) or isinstance(daily_limit, bool) or daily_limit < 1
    ):
        msg = f"daily_limit must be a positive whole number or None, not {daily_limit!r}"
        raise ValueError(msg)
    if expires_at is not None and (not isinstance(expires_at, dt.datetime) or expires_at.tzinfo is None):
        msg = "expires_at must be a timezone-aware datetime (UTC) or None"
        raise ValueError(msg)
    owner_text = str(owner)
    if not owner_text or len(owner_text) > 256:
        msg = "owner must be a non-empty string of at most 256 characters"
        raise ValueError(msg)
    coll = _keys_coll()
    for _ in range(5):  # a prefix collision (1 in 2.8e12 per pair) just draws again
        prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(_PREFIX_LEN))
        raw_key = f"{prefix}.{secrets.token_urlsafe(_SECRET_BYTES)}"
        key_id = f"ak_{secrets.token_hex(8)}"
        doc = {
            "_id": key_id,
            "key_id": key_id,
            "prefix": prefix,
            "key_sha256": _digest(raw_key),
            "owner": owner_text,
            "name": str(name)[:200],
            "daily_limit": daily_limit,
            "created_at": clock.utcnow(),
            "expires_at": expires_at.astimezone(dt.UTC) if expires_at else None,
            "revoked_at": None,
        }
        try:
            coll.insert_one(doc)
        except DuplicateKey:
            continue
        metering.event(FEATURE, "created")
        log.info("hotcache apikeys: created key %s (prefix %s) for owner %s", key_id, prefix, owner_text)
        return NewKey(key_id=key_id, raw_key=raw_key)
    msg = "could not draw a unique API key id"
    raise HotcacheError(msg)


def revoke(key_id: str) -> bool:
    """Revoke a key for good; effective on the next call in every process. False if it was already revoked."""
    coll = _keys_coll()
    doc = coll.find_one({"key_id": str(key_id)})
    if doc is None:
        raise KeyNotFound(f"no API key with id {str(key_id)[:80]!r}")
    newly = coll.update_one({"key_id": doc["key_id"], "revoked_at": None}, {"$set": {"revoked_at": clock.utcnow()}})
    tag = _tag(doc["key_sha256"])
    ttl = max(int(hotcache_settings.APIKEY_CACHE_TTL), 60)
    try:
        # Overwrite (not just delete) the cached record: a cold load that read MongoDB before the update
        # above cannot cache the key as valid again while this tombstone lives (the script refuses).
        redis_backend.call(FEATURE, lambda r: r.set(_meta_key(tag), "revoked", ex=ttl))
    except RedisUnavailable:
        # The cached record outlives this call only as long as Redis is unreachable for us; make the
        # next successful check in this process write the tombstone first.
        with _pending_lock:
            _pending_revokes.add(tag)
        log.warning("hotcache apikeys: redis unavailable while revoking %s; tombstone deferred", doc["key_id"])
    if newly:
        metering.event(FEATURE, "revoked")
        log.info("hotcache apikeys: revoked key %s (prefix %s)", doc["key_id"], doc["prefix"])
    return bool(newly)


def get(key_id: str) -> KeyInfo | None:
    docs = _keys_coll().find({"key_id": str(key_id)}, limit=1)
    if not docs:
        return None
    return _with_usage(docs)[0]


def list_keys(owner: str | int | None = None, limit: int | None = None) -> list[KeyInfo]:
    """Keys of ``owner`` (all keys when None), newest first, with today's use; at most ``limit`` when given.

    Cost: 2 MongoDB queries and 1 Redis round trip of one GET per listed key (``limit`` bounds it).
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        msg = f"limit must be a positive whole number or None, not {limit!r}"
        raise ValueError(msg)
    query = {} if owner is None else {"owner": str(owner)}
    docs = _keys_coll().find(query, sort=[("created_at", mongo.DESCENDING)], limit=limit or 0)
    return _with_usage(docs)


def _with_usage(docs: list[dict[str, Any]]) -> list[KeyInfo]:
    if not docs:
        return []
    today = clock.utcnow().date()
    totals = _totals([(d["key_id"], _tag(d["key_sha256"])) for d in docs], [today])
    return [_info(d, totals.get((d["key_id"], today), 0)) for d in docs]


def _totals(key_tags: list[tuple[str, str]], days: list[dt.date]) -> dict[tuple[str, dt.date], int]:
    """Use per (key_id, day): MongoDB's fallback count plus the larger of Redis's live and synced counter."""
    ids = [k for k, _ in key_tags]
    docs = _usage_coll().find(
        {"key_id": {"$in": ids}, "day": {"$in": [_day_name(d) for d in days]}},
        projection={"key_id": 1, "day": 1, "fallback": 1, "redis": 1},
    )
    stored = {(d["key_id"], dt.date.fromisoformat(d["day"])): d for d in docs}
    live: dict[tuple[str, dt.date], int] = {}

    def read(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for _, tag in key_tags:
            for day in days:
                pipe.get(_use_key(tag, day))
        return pipe.execute()

    try:
        values = iter(redis_backend.call(FEATURE, read))
        for key_id, _ in key_tags:
            for day in days:
                live[(key_id, day)] = int(next(values) or 0)
    except RedisUnavailable:
        pass
    out: dict[tuple[str, dt.date], int] = {}
    for key_id, _ in key_tags:
        for day in days:
            doc = stored.get((key_id, day), {})
            redis_count = max(int(doc.get("redis", 0) or 0), live.get((key_id, day), 0))
            out[(key_id, day)] = int(doc.get("fallback", 0) or 0) + redis_count
    return out


def usage(key_id: str, days: int = 30) -> list[tuple[dt.date, int]]:
    """Uses per UTC day for the last ``days`` days, newest first (MongoDB history merged with live Redis counters)."""
    if not isinstance(days, int) or days < 1:
        msg = "days must be a positive whole number"
        raise ValueError(msg)
    doc = _keys_coll().find_one({"key_id": str(key_id)}, projection={"key_id": 1, "key_sha256": 1})
    if doc is None:
        raise KeyNotFound(f"no API key with id {str(key_id)[:80]!r}")
    today = clock.utcnow().date()
    day_list = [today - dt.timedelta(days=i) for i in range(days)]
    totals = _totals([(doc["key_id"], _tag(doc["key_sha256"]))], day_list)
    return [(d, totals[(doc["key_id"], d)]) for d in day_list]


def usage_many(key_ids: list[str], days: int = 30) -> dict[str, list[tuple[dt.date, int]]]:
    """usage() for several keys at once: {key_id: [(day, uses), ...] newest first}; unknown ids are left out.

    Cost whatever the number of keys: 2 MongoDB queries and 1 Redis round trip of ``len(key_ids) x days``
    GETs (usage() per key would be 2 queries and 1 round trip each).
    """
    if not isinstance(days, int) or days < 1:
        msg = "days must be a positive whole number"
        raise ValueError(msg)
    ids = [str(k) for k in key_ids]
    if not ids:
        return {}
    docs = _keys_coll().find({"key_id": {"$in": ids}}, projection={"key_id": 1, "key_sha256": 1})
    if not docs:
        return {}
    today = clock.utcnow().date()
    day_list = [today - dt.timedelta(days=i) for i in range(days)]
    totals = _totals([(d["key_id"], _tag(d["key_sha256"])) for d in docs], day_list)
    return {d["key_id"]: [(day, totals[(d["key_id"], day)]) for day in day_list] for d in docs}


# --- check ---------------------------------------------------------------------------------------

_pending_lock = threading.Lock()
_pending_bases: set[tuple[str, str, dt.date]] = set()  # (key_id, tag, day) counted on MongoDB by this process
_pending_revokes: set[str] = set()  # tags whose tombstone could not be written
_pending_touched: set[tuple[dt.date, str]] = set()  # (day, member) whose touched-index SADD failed


@dataclasses.dataclass(slots=True, eq=False)
class _Doubt:
    """A check whose script reached Redis but whose reply was lost: Redis may or may not have counted it."""

    writer: str
    seq: int
    tag: str
    day: dt.date
    key_id: str = ""
    allowed: bool = False  # what the request was answered (decided on MongoDB, not counted there)
    held: bool = False  # reserved in the usage document's "doubt" field until resolved


_doubts: dict[str, _Doubt] = {}  # writer -> its unresolved check (at most one: resolved before its next check)
_pending_unhold: dict[tuple[str, dt.date], int] = {}  # (key_id, day) -> "doubt" reservations to take back
_seq = itertools.count(1)  # check sequence numbers: grow per process, so per writer
_nonce = secrets.token_hex(4)  # names this process in writer ids (a reused pid must not inherit sequences)


def _after_fork() -> None:
    global _seq, _nonce
    _seq = itertools.count(1)
    _nonce = secrets.token_hex(4)
    with _pending_lock:
        _doubts.clear()  # the parent's doubts: the parent resolves them
        _pending_unhold.clear()


os.register_at_fork(after_in_child=_after_fork)


def _writer() -> str:
    return f"{_nonce}:{threading.get_ident()}"


def _reset_state() -> None:
    """Forget this process's pending reconciliation (tests; a fresh process starts empty)."""
    with _pending_lock:
        _pending_bases.clear()
        _pending_revokes.clear()
        _pending_touched.clear()
        _doubts.clear()
        _pending_unhold.clear()


def _invalid(reason: str, prefix: str) -> InvalidKey:
    metering.event(FEATURE, "invalid")
    log.info("hotcache apikeys: rejected key (prefix %s): %s", prefix or "-", reason)
    return InvalidKey()


def _parse(raw_key: object) -> tuple[str, str]:
    """(digest, prefix) of a well-formed key, else InvalidKey (nothing of a malformed key is logged)."""
    if not isinstance(raw_key, str) or len(raw_key) > _MAX_HEADER or not _KEY_RE.fullmatch(raw_key):
        raise _invalid("malformed", "")
    return _digest(raw_key), raw_key[:_PREFIX_LEN]


def check(raw_key: str) -> Usage:
    """Validate ``raw_key`` and count one use; Usage.allowed is False once today's limit is used up.

    Raises InvalidKey (malformed, unknown, revoked or expired) and, with both stores down, MongoUnavailable.
    """
    digest, prefix = _parse(raw_key)
    tag = _tag(digest)
    now = clock.utcnow()
    today = now.date()
    writer, seq = _writer(), next(_seq)
    try:
        if _doubts or _pending_bases or _pending_revokes or _pending_touched or _pending_unhold:
            _reconcile()  # resolves this writer's check in doubt (if any) before this check can write
    except RedisUnavailable:  # nothing of this check was sent
        metering.event(FEATURE, "fallback")
        return _check_on_mongo(digest, prefix, now)
    try:
        reply = _run_check(tag, today, now, fill="", writer=writer, seq=seq)
        if reply[0] == "miss":
            reply = _run_check(tag, today, now, fill=_load_record(digest, prefix), writer=writer, seq=seq)
    except RedisUnavailable as exc:
        metering.event(FEATURE, "fallback")
        if exc.maybe_applied:
            # The script reached Redis, the reply did not come back: decide on MongoDB, count nowhere yet.
            return _check_in_doubt(digest, prefix, now, _Doubt(writer, seq, tag, today))
        return _check_on_mongo(digest, prefix, now)
    status = reply[0]
    if status == "stale":  # cannot happen: each sequence number is sent once (and resolved before the next)
        log.error("hotcache apikeys: check refused as stale by redis; counted on MongoDB")
        return _check_on_mongo(digest, prefix, now)
    if status in ("revoked", "unknown", "expired"):
        raise _invalid(status, prefix)
    record = json.loads(reply[2])
    if not hmac.compare_digest(str(record.get("h", "")), digest):
        raise _invalid("unknown", prefix)
    if status == "ok" and str(reply[3]) == "1":
        _mark_touched(today, f"{record['id']}:{tag}")
    return _usage(status == "ok", record["id"], record["owner"], int(reply[1]), record.get("limit"), now)


def _run_check(
    tag: str, today: dt.date, now: dt.datetime, *, fill: str, writer: str | None = None, seq: int | None = None
) -> list[str]:
    writer = writer or _writer()
    seq = seq if seq is not None else next(_seq)
    ttl = int(hotcache_settings.APIKEY_CACHE_TTL)
    if fill == "unknown":
        ttl = int(hotcache_settings.APIKEY_INVALID_CACHE_TTL)
    args = [repr(now.timestamp()), str(_counter_ttl()), fill, str(ttl), writer, str(seq), str(_TOKEN_TTL)]
    keys_ = [_meta_key(tag), _use_key(tag, today), _base_key(tag, today), _token_key(tag)]
    reply = redis_backend.call(FEATURE, lambda r: _CHECK(r, keys_, args))
    return [v.decode() if isinstance(v, bytes) else v for v in reply]


def _mark_touched(day: dt.date, member: str) -> None:
    """Add a key to the day's touched index (first use of the day only: see the module docstring)."""
    ttl = _counter_ttl()

    def add(r: Any) -> None:
        pipe = r.pipeline(transaction=False)
        pipe.sadd(_touched_key(day), member)
        pipe.expire(_touched_key(day), ttl)
        pipe.execute()

    try:
        redis_backend.call(FEATURE, add)
    except RedisUnavailable:  # the use is counted already: never fall back (that would count it twice)
        with _pending_lock:
            _pending_touched.add((day, member))
        log.warning("hotcache apikeys: redis unavailable while indexing today's use; retried on the next check")


def _load_record(digest: str, prefix: str) -> str:
    """The value to cache for this digest: the record's JSON, or 'revoked' / 'unknown' (one indexed query)."""
    doc = _keys_coll().find_one({"key_sha256": digest})
    if doc is None or not hmac.compare_digest(doc["key_sha256"], digest):
        return "unknown"
    if doc.get("revoked_at") is not None:
        return "revoked"
    return _record_json(doc)


def _usage(allowed: bool, key_id: str, owner: str, used: int, limit: int | None, now: dt.datetime) -> Usage:
    metering.event(FEATURE, "allowed" if allowed else "over_limit")
    return Usage(
        allowed=allowed,
        key_id=key_id,
        owner=owner,
        used_today=used,
        limit=limit,
        remaining=None if limit is None else max(0, limit - used),
        reset_at=_next_midnight(now),
    )


def _valid_record_on_mongo(digest: str, prefix: str, now: dt.datetime) -> dict[str, Any]:
    """The key's record by its indexed digest (one query); InvalidKey if unknown, revoked or expired."""
    doc = _keys_coll().find_one({"key_sha256": digest})
    if doc is None or not hmac.compare_digest(doc["key_sha256"], digest):
        raise _invalid("unknown", prefix)
    if doc.get("revoked_at") is not None:
        raise _invalid("revoked", prefix)
    expires = doc.get("expires_at")
    if expires is not None and now >= expires:
        raise _invalid("expired", prefix)
    return doc


def _check_on_mongo(digest: str, prefix: str, now: dt.datetime) -> Usage:
    """Redis is down: one indexed query for the record, then a conditional $inc of today's MongoDB count."""
    doc = _valid_record_on_mongo(digest, prefix, now)
    key_id, limit = doc["key_id"], doc.get("daily_limit")
    day = now.date()
    coll = _usage_coll()
    where = {"key_id": key_id, "day": _day_name(day)}
    inc = {"$inc": {"fallback": 1}, "$set": {"updated_at": now}}
    total = _known_total()
    if limit is None:
        try:
            after = coll.find_one_and_update(where, {**inc, "$setOnInsert": {"redis": 0}}, upsert=True)
        except DuplicateKey:  # two first uses of the day raced to insert; the document exists now
            after = coll.find_one_and_update(where, inc)
    else:
        under = {**where, "$expr": {"$lt": [total, limit]}}
        after = coll.find_one_and_update(under, inc)
        if after is None:
            # No document for today yet, or the limit is used up: create it if missing, then try once more.
            try:
                current = coll.find_one_and_update(
                    where, {"$setOnInsert": {"fallback": 0, "redis": 0}}, upsert=True
                )
            except DuplicateKey:  # a concurrent upsert created it first
                current = coll.find_one(where)
            used = _used(current)
            if used < limit:
                after = coll.find_one_and_update(under, inc)
            if after is None:
                with _pending_lock:
                    _pending_bases.add((key_id, _tag(digest), day))
                return _usage(False, key_id, doc["owner"], used, limit, now)
    with _pending_lock:
        _pending_bases.add((key_id, _tag(digest), day))
    return _usage(True, key_id, doc["owner"], _used(after), limit, now)


def _known_total() -> dict[str, Any]:
    """MongoDB's view of today's count for the limit: its own count, Redis's as of the last sync, doubts held."""
    return {"$add": [{"$ifNull": [f"${f}", 0]} for f in ("fallback", "redis", "doubt")]}


def _used(doc: dict[str, Any] | None) -> int:
    return sum(int((doc or {}).get(f, 0) or 0) for f in ("fallback", "redis", "doubt"))


def _check_in_doubt(digest: str, prefix: str, now: dt.datetime, doubt: _Doubt) -> Usage:
    """The check script may have counted this use on Redis: answer from MongoDB without counting it there.

    With a limit, a use is reserved in the day's usage document (``doubt`` field, a conditional ``$inc``
    like the fallback's) so concurrent fallbacks see it; the reservation is taken back once the doubt is
    resolved on Redis (where the use is then counted exactly once). The doubt is registered whatever the
    outcome: a refused request (over the limit, invalid key, MongoDB down) whose use Redis did count is
    taken back from the Redis counter at resolution.
    """
    try:
        doc = _valid_record_on_mongo(digest, prefix, now)
        doubt.key_id = key_id = doc["key_id"]
        limit = doc.get("daily_limit")
        coll = _usage_coll()
        where = {"key_id": key_id, "day": _day_name(doubt.day)}
        if limit is None:
            doubt.allowed = True
            return _usage(True, key_id, doc["owner"], _used(coll.find_one(where)) + 1, None, now)
        reserve = {"$inc": {"doubt": 1}, "$set": {"updated_at": now}}
        under = {**where, "$expr": {"$lt": [_known_total(), limit]}}
        after = coll.find_one_and_update(under, reserve)
        if after is None:
            try:
                current = coll.find_one_and_update(
                    where, {"$setOnInsert": {"fallback": 0, "redis": 0}}, upsert=True
                )
            except DuplicateKey:
                current = coll.find_one(where)
            if _used(current) < limit:
                after = coll.find_one_and_update(under, reserve)
            if after is None:
                return _usage(False, key_id, doc["owner"], _used(current), limit, now)
        doubt.allowed = doubt.held = True
        return _usage(True, key_id, doc["owner"], _used(after), limit, now)
    finally:
        # Registered only once decided: another thread may resolve it from now on.
        log.warning("hotcache apikeys: reply of a check lost; %s from MongoDB, resolved when redis answers",
                    "allowed" if doubt.allowed else "refused")
        with _pending_lock:
            _doubts[doubt.writer] = doubt


def _reconcile() -> None:
    """Redis answers again: write deferred tombstones and push MongoDB-counted uses into the day's base keys."""
    with _pending_lock:
        doubts = list(_doubts.values())
    if doubts:
        # Before any other write: settle the checks whose reply was lost (also the probe: the gate decides).
        redis_backend.call(FEATURE, lambda r: _resolve_doubts(r, doubts))
    else:
        # Probe first (no network while the health gate is open): no MongoDB read is spent while Redis is down.
        redis_backend.call(FEATURE, lambda r: r.ping())
    with _pending_lock:
        bases, revokes, touched = set(_pending_bases), set(_pending_revokes), set(_pending_touched)
        unhold = dict(_pending_unhold)
    if unhold:
        _unhold(unhold)
    if revokes or touched:
        ttl = max(int(hotcache_settings.APIKEY_CACHE_TTL), 60)
        counter_ttl = _counter_ttl()

        def tombstones(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            for tag in revokes:
                pipe.set(_meta_key(tag), "revoked", ex=ttl)
            for day, member in touched:
                pipe.sadd(_touched_key(day), member)
                pipe.expire(_touched_key(day), counter_ttl)
            pipe.execute()

        redis_backend.call(FEATURE, tombstones)
        with _pending_lock:
            _pending_revokes.difference_update(revokes)
            _pending_touched.difference_update(touched)
    if bases:
        try:
            docs = _usage_coll().find(
                {"key_id": {"$in": sorted({k for k, _, _ in bases})},
                 "day": {"$in": sorted({_day_name(d) for _, _, d in bases})}},
                projection={"key_id": 1, "day": 1, "fallback": 1},
            )
        except BackendUnavailable:
            return  # retried on the next check
        counts = {(d["key_id"], d["day"]): int(d.get("fallback", 0) or 0) for d in docs}
        _push_bases([(tag, day, counts.get((key_id, _day_name(day)), 0)) for key_id, tag, day in bases])
        with _pending_lock:
            _pending_bases.difference_update(bases)


def _resolve_doubts(r: Any, doubts: list[_Doubt]) -> None:
    """Run the resolve script for each doubt (idempotent), recording each outcome as soon as Redis gave it."""
    now = str(int(clock.time()))
    counter_ttl, token_ttl = str(_counter_ttl()), str(_TOKEN_TTL)
    for d in doubts:
        args = [d.writer, str(d.seq), "1" if d.allowed else "0", counter_ttl, now, token_ttl]
        outcome, first = (
            v.decode() if isinstance(v, bytes) else v
            for v in _RESOLVE(r, [_use_key(d.tag, d.day), _token_key(d.tag)], args)
        )
        with _pending_lock:
            if _doubts.get(d.writer) is d:
                del _doubts[d.writer]
                if d.held:
                    k = (d.key_id, d.day)
                    _pending_unhold[k] = _pending_unhold.get(k, 0) + 1
                if str(first) == "1":
                    _pending_touched.add((d.day, f"{d.key_id}:{d.tag}"))
        log.info("hotcache apikeys: check in doubt resolved (%s): %s", d.key_id or "-", outcome)


def _unhold(unhold: dict[tuple[str, dt.date], int]) -> None:
    """Take back the ``doubt`` reservations of resolved checks (their uses are on Redis now, or were refused)."""
    ops: list[mongo.Update | mongo.Insert] = [
        mongo.Update({"key_id": key_id, "day": _day_name(day)}, {"$inc": {"doubt": -n}})
        for (key_id, day), n in unhold.items()
    ]
    try:
        _usage_coll().bulk(ops)
    except BackendUnavailable:
        return  # retried on the next check
    with _pending_lock:
        for k, n in unhold.items():
            left = _pending_unhold.get(k, 0) - n
            if left > 0:
                _pending_unhold[k] = left
            else:
                _pending_unhold.pop(k, None)


def _push_bases(items: list[tuple[str, dt.date, int]]) -> int:
    items = [(tag, day, n) for tag, day, n in items if n > 0]
    if not items:
        return 0
    ttl = str(_counter_ttl())

    def push(r: Any) -> int:
        # One script call per key: each key lives in its own hash slot.
        return sum(int(_BASE(r, [_base_key(tag, day)], [str(n), ttl])) for tag, day, n in items)

    return redis_backend.call(FEATURE, push)


# --- sync ----------------------------------------------------------------------------------------


def sync_usage(days: int = 2) -> SyncResult:
    """Copy Redis's per-day counters of the last ``days`` UTC days into MongoDB (``api_key_usage``).

    Idempotent: each (key, day) document gets ``$max`` of the Redis counter, so running it twice (or
    from two workers at once) writes the same totals. Also pushes today's MongoDB-counted uses back
    into Redis and re-sends the tombstones of keys revoked in the window (see the module docstring).

    Cost grows with the keys USED in the window, never with all keys: MongoDB: 1 indexed query for the
    keys revoked in the window, 1 bulk write (when anything was counted), 1 query for today's
    MongoDB-counted uses, and 1 ``$in`` query on those keys when there are any. Redis: 1 round trip of
    the tombstones and one SSCAN per day (more pages only for days with over ~1,000 keys), 1 round trip of
    one GET per (used key, day) (per 2,000), then, when a past day's index is closed, 1 DEL round trip;
    plus 1 script call per key counted on MongoDB today.
    """
    if not isinstance(days, int) or days < 1:
        msg = "days must be a positive whole number"
        raise ValueError(msg)
    now = clock.utcnow()
    day_list = [now.date() - dt.timedelta(days=i) for i in range(days)]
    oldest = dt.datetime.combine(day_list[-1], dt.time(), tzinfo=dt.UTC)
    # Keys revoked in the window get their tombstone (again): a revocation made while some process could
    # not reach Redis reaches every process here at the latest (indexed range query, revoked keys only).
    revoked = [
        _tag(d["key_sha256"])
        for d in _keys_coll().find({"revoked_at": {"$gte": oldest}}, projection={"key_sha256": 1})
    ]
    try:
        touched = redis_backend.call(FEATURE, lambda r: _read_touched(r, revoked, day_list))
        pairs = [(member, day) for day in day_list for member in sorted(touched[day])]
        values = redis_backend.call(FEATURE, lambda r: _read_counters(r, pairs)) if pairs else []
    except RedisUnavailable:
        log.warning("hotcache apikeys: redis unavailable; usage sync skipped")
        return SyncResult(0, days, 0, 0, False)
    tags: dict[str, str] = {}
    ops: list[mongo.Update | mongo.Insert] = []
    for (member, day), value in zip(pairs, values, strict=True):
        key_id, _, tag = member.partition(":")
        tags[key_id] = tag
        n = int(value or 0)
        if n:
            ops.append(
                mongo.Update(
                    {"key_id": key_id, "day": _day_name(day)},
                    {"$max": {"redis": n}, "$setOnInsert": {"fallback": 0}, "$set": {"synced_at": now}},
                    upsert=True,
                )
            )
    coll = _usage_coll()
    if ops:
        coll.bulk(ops)
    # The write is done: a past day's index whose day ended over _CLOSE_GRACE ago will not change again.
    grace = dt.timedelta(seconds=_CLOSE_GRACE)
    closed = [d for d in day_list[1:] if touched[d] and now >= _next_midnight_of(d) + grace]
    if closed:
        try:
            redis_backend.call(FEATURE, lambda r: r.delete(*[_touched_key(d) for d in closed]))
        except RedisUnavailable:
            pass  # read again by the next sync: idempotent
    # Uses counted on MongoDB today (while Redis was down) go back into Redis's base for the limit. Such a
    # key may be in no touched index (never counted on Redis today), so its tag comes from its record.
    fallback_docs = coll.find(
        {"day": _day_name(day_list[0]), "fallback": {"$gt": 0}}, projection={"key_id": 1, "fallback": 1}
    )
    missing = sorted({f["key_id"] for f in fallback_docs} - tags.keys())
    if missing:
        for d in _keys_coll().find({"_id": {"$in": missing}}, projection={"key_id": 1, "key_sha256": 1}):
            tags[d["key_id"]] = _tag(d["key_sha256"])
    pushed = 0
    items = [(tags[f["key_id"]], day_list[0], int(f["fallback"])) for f in fallback_docs if f["key_id"] in tags]
    if items:
        try:
            pushed = _push_bases(items)
        except RedisUnavailable:
            pass
    return SyncResult(len({m for m, _ in pairs} | set(missing)), days, len(ops), pushed, True)


def _next_midnight_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def _read_touched(r: Any, revoked: list[str], day_list: list[dt.date]) -> dict[dt.date, set[str]]:
    """Write the tombstones and read each day's touched index (one round trip unless a set is large)."""
    tomb_ttl = max(int(hotcache_settings.APIKEY_CACHE_TTL), 60)
    pipe = r.pipeline(transaction=False)
    for tag in revoked:
        pipe.set(_meta_key(tag), "revoked", ex=tomb_ttl)
    for day in day_list:
        pipe.sscan(_touched_key(day), 0, count=_SSCAN_COUNT)
    replies = pipe.execute()[len(revoked) :]
    out: dict[dt.date, set[str]] = {}
    for day, (cursor, members) in zip(day_list, replies, strict=True):
        found = {m.decode() if isinstance(m, bytes) else m for m in members}
        while int(cursor):  # large sets only: SSCAN may return a member twice, the set absorbs it
            cursor, members = r.sscan(_touched_key(day), cursor, count=_SSCAN_COUNT)
            found.update(m.decode() if isinstance(m, bytes) else m for m in members)
        out[day] = found
    return out


def _read_counters(r: Any, pairs: list[tuple[str, dt.date]]) -> list[Any]:
    values: list[Any] = []
    for i in range(0, len(pairs), _SYNC_CHUNK):
        pipe = r.pipeline(transaction=False)
        for member, day in pairs[i : i + _SYNC_CHUNK]:
            pipe.get(_use_key(member.partition(":")[2], day))
        values += pipe.execute()
    return values


# --- the view decorator --------------------------------------------------------------------------


def _header_key(request: Any) -> str | None:
    """The raw key from ``Authorization: Api-Key <key>`` or the APIKEY_HEADER header; None when absent."""
    meta = request.META
    auth = meta.get("HTTP_AUTHORIZATION", "")
    if isinstance(auth, str) and auth[:8].lower() == "api-key ":
        return auth[8:]
    header = str(hotcache_settings.APIKEY_HEADER)
    value = meta.get("HTTP_" + header.upper().replace("-", "_"))
    return value if isinstance(value, str) else None


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    from django.http import JsonResponse

    response = JsonResponse(body, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _authorize(request: Any) -> Any:
    """None when the request may proceed (request.api_key set), else the 401/429/503 response."""
    raw = _header_key(request)
    if raw is None or raw == "":
        metering.event(FEATURE, "invalid")
        return _json(401, {"error": "api_key_required"}, {"WWW-Authenticate": "Api-Key"})
    try:
        result = check(raw)
    except InvalidKey:
        return _json(401, {"error": "invalid_api_key"}, {"WWW-Authenticate": "Api-Key"})
    except BackendUnavailable:
        retry = max(1, math.ceil(float(hotcache_settings.HEALTH_COOLDOWN)))
        log.error("hotcache apikeys: redis and mongodb unavailable; request refused (fail closed)")
        return _json(503, {"error": "api_keys_unavailable"}, {"Retry-After": str(retry)})
    request.api_key = result
    if not result.allowed:
        retry = max(1, math.ceil((result.reset_at - clock.utcnow()).total_seconds()))
        return _json(
            429,
            {"error": "daily_limit_exceeded", "limit": result.limit, "reset_at": result.reset_at.isoformat()},
            {"Retry-After": str(retry)},
        )
    return None


def require_api_key(view: Callable[..., Any]) -> Callable[..., Any]:
    """View decorator (sync and async): 401 without a valid key, 429 over the daily limit; sets request.api_key."""
    from asgiref.sync import iscoroutinefunction

    if iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
            from asgiref.sync import sync_to_async

            denied = await sync_to_async(_authorize, thread_sensitive=False)(request)
            if denied is not None:
                return denied
            return await view(request, *args, **kwargs)

        return async_wrapper

    @functools.wraps(view)
    def wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
        denied = _authorize(request)
        if denied is not None:
            return denied
        return view(request, *args, **kwargs)

    return wrapper
