"""Where workbench data lives: the Redis keys (one hash tag, ``{workbench:s}``), the Lua scripts, the MongoDB
collections and the ``origin`` of a workbench_active document. See docs/workbench.md#layout.
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


def _data_key(session_id: str) -> str:
    # Built several times per call (the key, the identity its envelope is sealed under, the remembered
    # envelope): cached per key prefix, which is read on every call so override_settings still applies.
    return _data_key_under(keys.prefix(), session_id)


@functools.lru_cache(maxsize=4096)
def _data_key_under(prefix: str, session_id: str) -> str:
    return keys.tagged(FEATURE, "s", "d", session_id)


def _ended_key(session_id: str, token: str) -> str:
    return keys.tagged(FEATURE, "s", "e", session_id, token)


def _gone_key(session_id: str) -> str:
    """The session's ended records (wb_end.lua: one field per end, the envelope it ended), kept
    WORKBENCH_ENDED_TTL: the recovery check never brings back a durable copy of an ended incarnation."""
    return keys.tagged(FEATURE, "s", "g", session_id)


def _index_key() -> str:
    return keys.tagged(FEATURE, "s", "idx")


def _ended_queue() -> str:
    return keys.tagged(FEATURE, "s", "ended")


def _claims_key() -> str:
    return keys.tagged(FEATURE, "s", "claims")


def _owners_key() -> str:
    return keys.tagged(FEATURE, "s", "owners")


def _fence_key() -> str:
    return keys.tagged(FEATURE, "s", "fence")


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
