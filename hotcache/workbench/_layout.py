"""Where workbench data lives: the Redis keys (spread over keys.bucket_count() hash tags by session id; one bucket
is the single tag ``{workbench:s}`` of earlier versions), the Lua scripts, the MongoDB collections and the
``origin`` of a workbench_active document. See docs/workbench.md#layout.
"""

from __future__ import annotations

import functools

from hotcache import keys
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings

FEATURE = "workbench"
HISTORY = "workbench_history"
ACTIVE = "workbench_active"
_QUEUE_TTL_FACTOR = 4  # the queue keys outlive every session in them
_REFRESH_FRACTION = 10  # a session's lifetime is refreshed once per this fraction of its idle timeout

_SAVE = redis_backend.Script("wb_save")
_LOAD = redis_backend.Script("wb_load")
_END = redis_backend.Script("wb_end")
_CLAIM = redis_backend.Script("wb_claim")
_ACK = redis_backend.Script("wb_ack")
_RELEASE = redis_backend.Script("wb_release")
_RECONCILE = redis_backend.Script("wb_reconcile")
_UNFENCE = redis_backend.Script("wb_unfence")

# workbench_active "origin": "redis" = a durable copy of a Redis save (Redis is authoritative);
# "fallback" = written on MongoDB during a Redis outage (may be newer than Redis: reconcile it);
# "fork" = an outage incarnation that Redis holds a different incarnation for (goes to history when idle).
_REDIS, _FALLBACK, _FORK = "redis", "fallback", "fork"


def _refresh_every() -> int:
    """Seconds between refreshes of a session's lifetime (its TTL and its index entry), at least 1.

    Saves and loads in between only read and write the session (2-4 billed commands instead of 6-7): the key's
    TTL is the idle timeout plus this interval, so a session lives at least WORKBENCH_IDLE_TIMEOUT after its
    last use, and the persister sees it idle at most this interval early (it is below
    WORKBENCH_PERSIST_IDLE_AFTER, so a session used after it was claimed is always refreshed back into the index).
    """
    idle = int(hotcache_settings.WORKBENCH_IDLE_TIMEOUT)
    persist_after = int(float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER))
    return max(1, min(idle, persist_after) // _REFRESH_FRACTION)


def _key_ttl() -> int:
    """The TTL a refresh gives a session's key: the idle timeout plus the refresh interval."""
    return int(hotcache_settings.WORKBENCH_IDLE_TIMEOUT) + _refresh_every()


_LEGACY = "s"  # the single hash tag of the layout before the buckets (and of KEY_BUCKETS=1)


def _buckets() -> tuple[str, ...]:
    """The hash tags sessions are spread over (bucket b at index b)."""
    return keys.bucket_tags(FEATURE, _LEGACY, keys.bucket_count())


def _walked() -> tuple[str, ...]:
    """The buckets the jobs walk: every bucket, then the single-tag layout when it is not one of them (sessions
    written before the layout was spread, or before KEY_BUCKETS changed: still persisted, see _adopt_legacy)."""
    tags = _buckets()
    return tags if _LEGACY in tags else (*tags, _LEGACY)


def _bucket(session_id: str) -> str:
    """The bucket (hash tag) of a session: every key of it and of its bucket's indexes share this slot."""
    tags = _buckets()
    return tags[keys.bucket_of(session_id, len(tags))]


def _data_key(session_id: str, bucket: str | None = None) -> str:
    """The session's hash in its bucket (``bucket``: in that one, e.g. the single-tag layout's)."""
    # Built several times per call: cached per key prefix and bucket count, which are read on every call so
    # override_settings still applies.
    return _data_key_under(keys.prefix(), keys.bucket_count(), bucket, session_id)


@functools.lru_cache(maxsize=4096)
def _data_key_under(prefix: str, count: int, bucket: str | None, session_id: str) -> str:
    return keys.tagged(FEATURE, bucket if bucket is not None else _bucket(session_id), "d", session_id)


def _identity(session_id: str) -> str:
    """What a session's envelope is sealed under: its key in the single-tag layout, whatever bucket holds it, so
    an envelope stays valid when the session moves between layouts (a copy under another id still fails)."""
    return _data_key(session_id, _LEGACY)


def _ended_key(session_id: str, token: str, bucket: str | None = None) -> str:
    return keys.tagged(FEATURE, bucket if bucket is not None else _bucket(session_id), "e", session_id, token)


def _gone_key(session_id: str, bucket: str | None = None) -> str:
    """The session's ended records (wb_end.lua: one field per end, the envelope it ended), kept
    WORKBENCH_ENDED_TTL: the recovery check never brings back a durable copy of an ended incarnation."""
    return keys.tagged(FEATURE, bucket if bucket is not None else _bucket(session_id), "g", session_id)


# A bucket's indexes and queues. ``bucket`` None: the single-tag layout's (the only bucket when KEY_BUCKETS=1).
def _index_key(bucket: str | None = None) -> str:
    return keys.tagged(FEATURE, bucket or _LEGACY, "idx")


def _ended_queue(bucket: str | None = None) -> str:
    return keys.tagged(FEATURE, bucket or _LEGACY, "ended")


def _claims_key(bucket: str | None = None) -> str:
    return keys.tagged(FEATURE, bucket or _LEGACY, "claims")


def _owners_key(bucket: str | None = None) -> str:
    return keys.tagged(FEATURE, bucket or _LEGACY, "owners")


def _fence_key(bucket: str | None = None) -> str:
    return keys.tagged(FEATURE, bucket or _LEGACY, "fence")


def _history() -> mongo.Collection:
    def create(c: mongo.Collection) -> None:
        c.create_index([("owner", mongo.ASCENDING), ("closed_at", mongo.DESCENDING)], name="owner_closed")
        c.create_index([("closed_at", mongo.DESCENDING)], name="closed")

    return mongo.ensure_indexes(HISTORY, feature=FEATURE, create=create)


def _active() -> mongo.Collection:
    def create(c: mongo.Collection) -> None:
        c.create_index([("last_seen", mongo.ASCENDING)], name="last_seen")

    return mongo.ensure_indexes(ACTIVE, feature=FEATURE, create=create)


_LIVE = {"ended": {"$ne": True}}  # tombstones (ended on MongoDB during an outage) are not sessions
