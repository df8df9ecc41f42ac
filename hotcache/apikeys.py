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

Tampered Redis: every cached value a check decides on (record, tombstone, 'unknown') is signed with
hotcache.signing for its tag; the record also carries ``u``, the Redis time after which the script refuses
it, so a genuine record written back after a revocation expires like the cache. The script returns the
value it used and Python verifies it (same single round trip); a value that fails is absent: counted as
tampered, the use the script counted under it given back (resolved like a refused lost check), the record
reloaded from MongoDB and cached over it. Counters cannot be signed (Lua INCRs them): one that is not a
whole number is restored from MongoDB; touched-index members are signed, since the sync trusts them. The
README ("Tampered Redis") says what an attacker who writes Redis can still do.

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
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from django.conf import settings as django_settings

from hotcache import clock, keys, metering, signing
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import BackendUnavailable, DuplicateKey, HotcacheError, InvalidName, RedisUnavailable

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
_FIX = redis_backend.Script("apikey_fix")
_META = "apikeys.meta"  # signing purpose of a key's cached value (record, tombstone or 'unknown'); ident: its tag
_TOUCHED = "apikeys.touched"  # signing purpose of a touched-index member; ident: the day
_MAX_OWNER = 256
_MAX_NAME = 200
_MAX_DAILY_LIMIT = 10**12  # exact in Lua's doubles, BSON's int64 and Redis's counters alike
_MAX_DAYS = 3660  # usage()/usage_many()/sync_usage() windows: ten years
_KEY_ID_PATTERN = r"[A-Za-z0-9_\-]{1,64}"  # create() makes ak_<16 hex>; anything else is simply not found
_MEMBER_RE = re.compile(r"([A-Za-z0-9_\-]{1,64}):([0-9a-f]{32})", re.ASCII)  # touched index: <key_id>:<tag>
_COUNT_RE = re.compile(rb"[0-9]{1,18}")  # a day counter as the scripts accept it (never negative)
_FRESH_MARGIN = 60  # seconds a cached record's "u" lies beyond its Redis TTL (both on Redis's clock)
_ATTEMPTS = 4  # check script calls per check at most (miss, forged record, malformed counter: see check())
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


def _sealed_record(doc: dict[str, Any], tag: str, redis_now: float) -> str:
    """The key's cached record, signed: every field a check decides on (owner, limit, expiry, digest), and
    ``u``, the Redis time after which the script refuses it: a genuine record written back later (to use a
    key revoked since) is good for at most APIKEY_CACHE_TTL + _FRESH_MARGIN seconds after it was made."""
    exp = doc.get("expires_at")
    body = {
        "id": doc["key_id"],
        "owner": doc["owner"],
        "limit": doc.get("daily_limit"),
        "exp": exp.timestamp() if exp else None,
        "h": doc["key_sha256"],
        "u": int(redis_now) + int(hotcache_settings.APIKEY_CACHE_TTL) + _FRESH_MARGIN,
    }
    return signing.seal_json(_META, tag, body)


def _tombstone(tag: str) -> str:
    return signing.seal(_META, tag, "revoked")


def _unknown(tag: str) -> str:
    return signing.seal(_META, tag, "unknown")


def _touched_member(day: dt.date, body: str) -> str:
    """A touched-index member (body ``<key_id>:<tag>``), signed: sync_usage() writes MongoDB history from it."""
    return signing.seal(_TOUCHED, _day_name(day), body)


@dataclasses.dataclass(frozen=True, slots=True)
class _Cached:
    """A verified cached value: a key record, or the 'revoked' tombstone, or the 'unknown' marker."""

    kind: str  # "key" | "revoked" | "unknown"
    key_id: str = ""
    owner: str = ""
    limit: int | None = None
    digest: str = ""


_verified: dict[tuple[str, bytes], tuple[tuple[Any, ...], _Cached]] = {}  # see _open_meta
_VERIFIED_MAX = 4096


def _open_meta(tag: str, raw: object) -> _Cached | None:
    """The cached value at the key's meta if hotcache signed it for this tag and it is well formed, else None.

    The answer for exact bytes already verified under the same secrets is remembered (at most _VERIFIED_MAX
    values, then forgotten at once): a warm check of a cached record spends no HMAC and no JSON parse.
    """
    keyring = (django_settings.SECRET_KEY, *getattr(django_settings, "SECRET_KEY_FALLBACKS", ()))
    memo = (tag, raw) if isinstance(raw, bytes) else None
    if memo is not None:
        known = _verified.get(memo)
        if known is not None and known[0] == keyring:
            return known[1]
    cached = _verify_meta(tag, raw)
    if cached is not None and memo is not None:
        if len(_verified) >= _VERIFIED_MAX:
            _verified.clear()
        _verified[memo] = (keyring, cached)
    return cached


def _verify_meta(tag: str, raw: object) -> _Cached | None:
    body = signing.unseal(_META, tag, raw)
    if body is None:
        return None
    if body in ("revoked", "unknown"):
        return _Cached(body)
    try:
        m = json.loads(body)
    except ValueError:
        return None
    if not isinstance(m, dict):
        return None
    key_id, owner, digest, limit, exp, until = (m.get(f) for f in ("id", "owner", "h", "limit", "exp", "u"))
    if not (isinstance(key_id, str) and isinstance(owner, str) and isinstance(digest, str)):
        return None
    if type(until) is not int:  # the script refuses a record past it (on Redis's clock)
        return None
    if limit is not None and type(limit) is not int:
        return None
    if exp is not None and type(exp) not in (int, float):
        return None
    return _Cached("key", key_id, owner, limit, digest)


def _count(value: object) -> int | None:
    """A day counter as Redis returned it (absent = 0); None when it is not a whole number the scripts accept."""
    if value is None:
        return 0
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    if isinstance(value, bytes) and _COUNT_RE.fullmatch(value):
        return int(value)
    return None


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
    """Make a key for ``owner``; the raw key is in the result only (store it now: it cannot be shown again).

    Raises ValueError for a bad limit or expiry and InvalidName (a ValueError) for an owner or name that is
    not text hotcache stores (see keys.text); nothing is written then.
    """
    if daily_limit is not None and (
        not isinstance(daily_limit, int) or isinstance(daily_limit, bool) or not 1 <= daily_limit <= _MAX_DAILY_LIMIT
    ):
        msg = f"daily_limit must be a whole number from 1 to {_MAX_DAILY_LIMIT} or None, not {daily_limit!r:.80}"
        raise ValueError(msg)
    if expires_at is not None and (not isinstance(expires_at, dt.datetime) or expires_at.tzinfo is None):
        msg = "expires_at must be a timezone-aware datetime (UTC) or None"
        raise ValueError(msg)
    owner_text = _owner(owner)
    name_text = keys.text(name, what="name", max_length=_MAX_NAME, allow_empty=True)
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
            "name": name_text,
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


def _owner(owner: object) -> str:
    """The one boundary for an owner (create() and list_keys()): text or a whole number, InvalidName otherwise."""
    if isinstance(owner, int) and not isinstance(owner, bool):
        owner = str(owner)  # an int of over 256 digits is refused below as too long
    elif not isinstance(owner, str):
        msg = f"owner must be a string or a whole number, not {type(owner).__name__}"
        raise InvalidName(msg)
    return keys.text(owner, what="owner", max_length=_MAX_OWNER)


def _key_id(value: object) -> str | None:
    """``value`` if it can be a key id, else None: callers answer as for an unknown id (no store is asked)."""
    try:
        return keys.validate_name(value, what="key_id", pattern=_KEY_ID_PATTERN)
    except InvalidName:
        return None


def _days(days: object) -> int:
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= _MAX_DAYS:
        msg = f"days must be a whole number from 1 to {_MAX_DAYS}"
        raise ValueError(msg)
    return days


def _not_found(key_id: object) -> KeyNotFound:
    return KeyNotFound(f"no API key with id {repr(key_id)[:80]}")


def revoke(key_id: str) -> bool:
    """Revoke a key for good; effective on the next call in every process. False if it was already revoked."""
    wanted = _key_id(key_id)
    coll = _keys_coll()
    doc = coll.find_one({"key_id": wanted}) if wanted else None
    if doc is None:
        raise _not_found(key_id)
    newly = coll.update_one({"key_id": doc["key_id"], "revoked_at": None}, {"$set": {"revoked_at": clock.utcnow()}})
    tag = _tag(doc["key_sha256"])
    ttl = max(int(hotcache_settings.APIKEY_CACHE_TTL), 60)
    try:
        # Overwrite (not just delete) the cached record: a cold load that read MongoDB before the update
        # above cannot cache the key as valid again while this tombstone lives (the script refuses).
        redis_backend.call(FEATURE, lambda r: r.set(_meta_key(tag), _tombstone(tag), ex=ttl))
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
    wanted = _key_id(key_id)
    if wanted is None:
        return None
    docs = _keys_coll().find({"key_id": wanted}, limit=1)
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
    query = {} if owner is None else {"owner": _owner(owner)}
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
        return _replies(pipe)

    try:
        values = iter(redis_backend.call(FEATURE, read))
        for key_id, tag in key_tags:
            for day in days:
                n = _count(next(values))
                if n is None:  # not a count (or not a string): absent, MongoDB's copy stands
                    signing.tampered(FEATURE, _use_key(tag, day), "is not a count")
                live[(key_id, day)] = n or 0
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
    _days(days)
    wanted = _key_id(key_id)
    doc = _keys_coll().find_one({"key_id": wanted}, projection={"key_id": 1, "key_sha256": 1}) if wanted else None
    if doc is None:
        raise _not_found(key_id)
    today = clock.utcnow().date()
    day_list = [today - dt.timedelta(days=i) for i in range(days)]
    totals = _totals([(doc["key_id"], _tag(doc["key_sha256"]))], day_list)
    return [(d, totals[(doc["key_id"], d)]) for d in day_list]


def usage_many(key_ids: list[str], days: int = 30) -> dict[str, list[tuple[dt.date, int]]]:
    """usage() for several keys at once: {key_id: [(day, uses), ...] newest first}; unknown ids are left out.

    Cost whatever the number of keys: 2 MongoDB queries and 1 Redis round trip of ``len(key_ids) x days``
    GETs (usage() per key would be 2 queries and 1 round trip each).
    """
    _days(days)
    ids = [k for k in map(_key_id, key_ids) if k is not None]
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
_pending_touched: set[tuple[dt.date, str]] = set()  # (day, "<key_id>:<tag>") whose touched-index SADD failed


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
    _verified.clear()


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
    try:
        if _doubts or _pending_bases or _pending_revokes or _pending_touched or _pending_unhold:
            _reconcile()  # resolves this writer's check in doubt (if any) before this check can write
    except RedisUnavailable:  # nothing of this check was sent
        metering.event(FEATURE, "fallback")
        return _check_on_mongo(digest, prefix, now)
    call = _Call(_writer(), next(_seq))
    try:
        return _check_on_redis(digest, prefix, tag, now, call)
    except RedisUnavailable as exc:
        metering.event(FEATURE, "fallback")
        if exc.maybe_applied:
            # The script reached Redis, the reply did not come back: decide on MongoDB, count nowhere yet.
            return _check_in_doubt(digest, prefix, now, _Doubt(call.writer, call.seq, tag, now.date()))
        return _check_on_mongo(digest, prefix, now)


@dataclasses.dataclass(slots=True)
class _Call:
    """The writer and sequence number of the check script call in flight (a new one after a give-back)."""

    writer: str
    seq: int


class _Reply(NamedTuple):
    """What apikey_check.lua answered."""

    status: str
    used: int
    meta: bytes  # the cached value the script decided on, as stored: Python verifies it (Lua cannot)
    first: bool  # this call created the day's counter
    note: str  # records the script found malformed: "use", "base", "tok"
    time: int  # Redis's clock (seconds): the base of the "u" of a record cached next


def _check_on_redis(digest: str, prefix: str, tag: str, now: dt.datetime, call: _Call) -> Usage:
    """The check script, then what its answer needs: the record loaded on a miss, or a repair when Redis held
    a value hotcache did not sign (see the module docstring). Warm: one script call, nothing else."""
    today = now.date()
    fill, expect = "", b""
    for _ in range(_ATTEMPTS):
        reply = _run_check(tag, today, now, fill=fill, writer=call.writer, seq=call.seq, expect=expect or None)
        if "tok" in reply.note:
            signing.tampered(FEATURE, _token_key(tag), "held a malformed writer record (dropped)")
        if reply.status in ("miss", "old"):
            if reply.status == "old":
                signing.tampered(FEATURE, _meta_key(tag), "was used past its validity (written back?)")
            fill = _load_record(digest, prefix, reply.time)
            continue
        if reply.status == "badcount":  # nothing was done; put MongoDB's counts back, then check again
            for name, key in (("use", _use_key(tag, today)), ("base", _base_key(tag, today))):
                if name in reply.note:
                    signing.tampered(FEATURE, key, "is not a count")
            _fix_counters(digest, tag, today)
            continue
        if reply.status == "stale":  # cannot happen: each sequence number is sent once (and resolved before the next)
            log.error("hotcache apikeys: check refused as stale by redis; counted on MongoDB")
            return _check_on_mongo(digest, prefix, now)
        cached = _open_meta(tag, reply.meta) if reply.status != "bad" else None
        if cached is not None:
            return _decide(reply, cached, digest, prefix, tag, now)
        # Redis held a value hotcache did not sign (or cannot read): absent. Take back the use the script
        # counted under it, then decide again on the record from MongoDB, cached over the forged value.
        signing.tampered(FEATURE, _meta_key(tag), "failed verification" if reply.meta else "is unreadable")
        if reply.status == "ok":
            if not _give_back(call, tag, today):
                metering.event(FEATURE, "fallback")
                return _check_on_mongo(digest, prefix, now)
        fill, expect = _load_record(digest, prefix, reply.time), reply.meta
    log.error("hotcache apikeys: redis kept answering with values hotcache did not sign; decided on MongoDB")
    return _check_on_mongo(digest, prefix, now)


def _decide(reply: _Reply, cached: _Cached, digest: str, prefix: str, tag: str, now: dt.datetime) -> Usage:
    """The Usage of a script answer whose cached value verified."""
    if cached.kind != "key":
        raise _invalid(cached.kind, prefix)
    if not hmac.compare_digest(cached.digest.encode(), digest.encode()):
        raise _invalid("unknown", prefix)
    if reply.status == "expired":
        raise _invalid("expired", prefix)
    if reply.status == "ok" and reply.first:
        _mark_touched(now.date(), f"{cached.key_id}:{tag}")
    return _usage(reply.status == "ok", cached.key_id, cached.owner, reply.used, cached.limit, now)


def _give_back(call: _Call, tag: str, day: dt.date) -> bool:
    """Take back the use a check script counted under a forged record: resolved like a refused lost check.

    Registered as a doubt first, so a failure here leaves it to be settled before this process's next check;
    False then (the caller decides on MongoDB). On success the next script call gets a new sequence number.
    """
    doubt = _Doubt(call.writer, call.seq, tag, day)  # allowed=False: "counted by redis but refused" -> DECR
    with _pending_lock:
        _doubts[call.writer] = doubt
    try:
        redis_backend.call(FEATURE, lambda r: _resolve_doubts(r, [doubt]))
    except RedisUnavailable:
        return False
    call.seq = next(_seq)
    return True


def _run_check(
    tag: str,
    today: dt.date,
    now: dt.datetime,
    *,
    fill: str,
    writer: str | None = None,
    seq: int | None = None,
    expect: bytes | None = None,
) -> _Reply:
    writer = writer or _writer()
    seq = seq if seq is not None else next(_seq)
    ttl = int(hotcache_settings.APIKEY_CACHE_TTL)
    if fill.endswith(".unknown"):
        ttl = int(hotcache_settings.APIKEY_INVALID_CACHE_TTL)
    args: list[Any] = [repr(now.timestamp()), str(_counter_ttl()), fill, str(ttl), writer, str(seq), str(_TOKEN_TTL)]
    if expect is not None:
        args.append(expect)
    keys_ = [_meta_key(tag), _use_key(tag, today), _base_key(tag, today), _token_key(tag)]
    status, used, meta, first, note, redis_now = redis_backend.call(FEATURE, lambda r: _CHECK(r, keys_, args))
    return _Reply(_text(status), int(used), meta if isinstance(meta, bytes) else str(meta).encode(),
                  str(first) == "1", _text(note), int(redis_now))


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _replies(pipe: Any) -> list[Any]:
    """Run a pipeline. A WRONGTYPE reply (someone replaced a key by another type) stays in the list as the
    error, for the caller to treat as absent; any other error is raised (call() translates it)."""
    replies = pipe.execute(raise_on_error=False)
    for reply in replies:
        if isinstance(reply, Exception) and not str(reply).startswith("WRONGTYPE"):
            raise reply
    return replies


def _mark_touched(day: dt.date, body: str) -> None:
    """Add a key to the day's touched index (first use of the day only: see the module docstring)."""

    def add(r: Any) -> None:
        _write_index(r, [], [(day, body)])

    try:
        redis_backend.call(FEATURE, add)
    except RedisUnavailable:  # the use is counted already: never fall back (that would count it twice)
        with _pending_lock:
            _pending_touched.add((day, body))
        log.warning("hotcache apikeys: redis unavailable while indexing today's use; retried on the next check")


def _write_index(r: Any, revoked: Iterable[str], touched: Iterable[tuple[dt.date, str]]) -> None:
    """Tombstones for ``revoked`` tags and (day, ``<key_id>:<tag>``) entries of the touched index, one round trip.

    A touched index of the wrong type (not ours: we only ever SADD to it) is counted as tampered, dropped and
    written again in a second round trip, so one bad key cannot fail every later check of the process.
    """
    revoked, touched = list(revoked), list(touched)
    ttl, counter_ttl = max(int(hotcache_settings.APIKEY_CACHE_TTL), 60), _counter_ttl()
    pipe = r.pipeline(transaction=False)
    for tag in revoked:
        pipe.set(_meta_key(tag), _tombstone(tag), ex=ttl)
    for day, body in touched:
        pipe.sadd(_touched_key(day), _touched_member(day, body))
        pipe.expire(_touched_key(day), counter_ttl)
    added = _replies(pipe)[len(revoked) :: 2]
    broken = sorted({day for (day, _), reply in zip(touched, added, strict=True) if isinstance(reply, Exception)})
    if not broken:
        return
    pipe = r.pipeline(transaction=False)
    for day in broken:
        signing.tampered(FEATURE, _touched_key(day), "is not a set (replaced)")
        pipe.delete(_touched_key(day))
    for day, body in touched:
        if day in broken:
            pipe.sadd(_touched_key(day), _touched_member(day, body))
            pipe.expire(_touched_key(day), counter_ttl)
    pipe.execute()


def _load_record(digest: str, prefix: str, redis_now: float | None = None) -> str:
    """The value to cache for this digest, signed: the record, or the tombstone / 'unknown' (one indexed query).

    ``redis_now``: Redis's clock as the last script reply gave it (the record's "u" is on that clock).
    """
    tag = _tag(digest)
    doc = _keys_coll().find_one({"key_sha256": digest})
    if doc is None or not hmac.compare_digest(doc["key_sha256"], digest):
        return _unknown(tag)
    if doc.get("revoked_at") is not None:
        return _tombstone(tag)
    return _sealed_record(doc, tag, clock.time() if redis_now is None else redis_now)


def _fix_counters(digest: str, tag: str, day: dt.date) -> None:
    """Replace the day's counters that are not integers by MongoDB's copies (2 queries, 1 script call).

    The counter gets MongoDB's last synced value of it (uses since that sync are lost, as when Redis loses
    its data), the base MongoDB's own count for the day. MongoDB down: MongoUnavailable (fail closed).
    """
    doc = _keys_coll().find_one({"key_sha256": digest}, projection={"key_id": 1})
    counts = _usage_coll().find_one({"key_id": doc["key_id"], "day": _day_name(day)}) if doc else None
    floor, base = (int((counts or {}).get(f, 0) or 0) for f in ("redis", "fallback"))
    args = [str(floor), str(base), str(_counter_ttl())]
    redis_backend.call(FEATURE, lambda r: _FIX(r, [_use_key(tag, day), _base_key(tag, day)], args))


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
        redis_backend.call(FEATURE, lambda r: _write_index(r, revokes, touched))
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
        outcome, first, note = (_text(v) for v in _RESOLVE(r, [_use_key(d.tag, d.day), _token_key(d.tag)], args))
        if "use" in note:
            signing.tampered(FEATURE, _use_key(d.tag, d.day), "is not a count (restarted)")
        if "tok" in note:
            signing.tampered(FEATURE, _token_key(d.tag), "held a malformed writer record (dropped)")
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

    Only index members hotcache signed are read (see _verified_members); a counter that is not an integer
    is counted as tampered and left out (MongoDB keeps its last good copy).
    """
    _days(days)
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
        pairs = _verified_members(touched)
        values = redis_backend.call(FEATURE, lambda r: _read_counters(r, pairs)) if pairs else []
    except RedisUnavailable:
        log.warning("hotcache apikeys: redis unavailable; usage sync skipped")
        return SyncResult(0, days, 0, 0, False)
    tags: dict[str, str] = {}
    ops: list[mongo.Update | mongo.Insert] = []
    for (key_id, tag, day), value in zip(pairs, values, strict=True):
        tags[key_id] = tag
        n = _count(value)
        if n is None:  # not a count: never copied into the history
            signing.tampered(FEATURE, _use_key(tag, day), "is not a count")
        elif n:
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
    return SyncResult(len({k for k, _, _ in pairs} | set(missing)), days, len(ops), pushed, True)


def _next_midnight_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def _read_touched(r: Any, revoked: list[str], day_list: list[dt.date]) -> dict[dt.date, set[bytes]]:
    """Write the tombstones and read each day's touched index (one round trip unless a set is large)."""
    tomb_ttl = max(int(hotcache_settings.APIKEY_CACHE_TTL), 60)
    pipe = r.pipeline(transaction=False)
    for tag in revoked:
        pipe.set(_meta_key(tag), _tombstone(tag), ex=tomb_ttl)
    for day in day_list:
        pipe.sscan(_touched_key(day), 0, count=_SSCAN_COUNT)
    replies = _replies(pipe)[len(revoked) :]
    out: dict[dt.date, set[bytes]] = {}
    for day, reply in zip(day_list, replies, strict=True):
        if isinstance(reply, Exception):  # not a set: someone replaced it, what it indexed is gone
            signing.tampered(FEATURE, _touched_key(day), "is not a set (dropped)")
            r.delete(_touched_key(day))
            out[day] = set()
            continue
        cursor, members = reply
        found = set(members)
        while int(cursor):  # large sets only: SSCAN may return a member twice, the set absorbs it
            cursor, members = r.sscan(_touched_key(day), cursor, count=_SSCAN_COUNT)
            found.update(members)
        out[day] = found
    return out


def _verified_members(touched: dict[dt.date, set[bytes]]) -> list[tuple[str, str, dt.date]]:
    """The (key_id, tag, day) entries of the touched indexes that hotcache wrote, newest day first.

    A member is trusted when signed for its day. An unsigned one in the shape written before members were
    signed is trusted when MongoDB confirms that key has that tag (1 query, only when there are such
    members, at most _SYNC_CHUNK of them); any other member is counted as tampered and removed, so it can
    neither name a key's history nor create documents.
    """
    found: set[tuple[str, str, dt.date]] = set()
    unsigned: list[tuple[str, str, dt.date, bytes]] = []
    bad: list[tuple[dt.date, bytes]] = []
    for day, members in touched.items():
        for raw in members:
            body = signing.unseal(_TOUCHED, _day_name(day), raw)
            signed = _MEMBER_RE.fullmatch(body) if body is not None else None
            if signed:
                found.add((signed[1], signed[2], day))
                continue
            old = _MEMBER_RE.fullmatch(_text(raw)) if body is None else None
            if old and len(unsigned) < _SYNC_CHUNK:
                unsigned.append((old[1], old[2], day, raw))
            else:
                bad.append((day, raw))
    if unsigned:
        ids = sorted({key_id for key_id, _, _, _ in unsigned})
        real = {
            d["key_id"]: _tag(d["key_sha256"])
            for d in _keys_coll().find({"_id": {"$in": ids}}, projection={"key_id": 1, "key_sha256": 1})
        }
        for key_id, tag, day, raw in unsigned:
            if real.get(key_id) == tag:
                found.add((key_id, tag, day))
            else:
                bad.append((day, raw))
    if bad:
        for day in sorted({day for day, _ in bad}):
            signing.tampered(FEATURE, _touched_key(day), "held a member hotcache did not sign (removed)")

        def remove(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            for day, raw in bad:
                pipe.srem(_touched_key(day), raw)
            _replies(pipe)

        try:
            redis_backend.call(FEATURE, remove)
        except RedisUnavailable:
            pass  # ignored again by the next sync
    return sorted(found, key=lambda e: (-e[2].toordinal(), e[0], e[1]))


def _read_counters(r: Any, pairs: list[tuple[str, str, dt.date]]) -> list[Any]:
    values: list[Any] = []
    for i in range(0, len(pairs), _SYNC_CHUNK):
        pipe = r.pipeline(transaction=False)
        for _, tag, day in pairs[i : i + _SYNC_CHUNK]:
            pipe.get(_use_key(tag, day))
        values += _replies(pipe)
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
