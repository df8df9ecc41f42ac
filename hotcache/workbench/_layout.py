"""Where workbench data lives: the Redis keys (one hash tag, ``{workbench:s}``), the Lua scripts, the MongoDB
collections and the ``origin`` of a workbench_active document. See docs/workbench.md#layout.
"""

from __future__ import annotations

import functools

from hotcache import keys
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend

FEATURE = "workbench"
HISTORY = "workbench_history"
ACTIVE = "workbench_active"
_QUEUE_TTL_FACTOR = 4  # the queue keys outlive every session in them

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


def _data_key(session_id: str) -> str:
    # Built several times per call (the key, the identity its envelope is sealed under, the remembered
    # envelope): cached per key prefix, which is read on every call so override_settings still applies.
    return _data_key_under(keys.prefix(), session_id)


@functools.lru_cache(maxsize=4096)
def _data_key_under(prefix: str, session_id: str) -> str:
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
