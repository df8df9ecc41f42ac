"""What this process knows about codes MongoDB may hold: the outage notice it owes Redis and the marker.

A process that saw an outage (an mfa fallback, or the Redis gate opening for any feature) owes the
signed marker "MongoDB may hold live codes until T" (``<prefix>:mfa:mongo_live_until``) and keeps
T in memory; verify() asks MongoDB on a Redis miss only before max(marker, T). See docs/mfa.md
("The outage marker").

On a Redis Cluster the marker is written in ``COPIES`` copies, one per sixteenth of the slots (hash tags chosen
once so each copy's slot falls in its sixteenth), and a verify reads the copy on its code record's node: the
script and the ``GET`` stay one round trip, as on one server.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from redis.crc import key_slot

from hotcache import keys, recovery, signing
from hotcache.backends.health import redis_gate
from hotcache.conf import hotcache_settings
from hotcache.mfa._conf import FEATURE

__all__ = [
    "COPIES",
    "horizon_ms",
    "marker_key",
    "marker_key_near",
    "marker_keys",
    "marker_ms",
    "published",
    "saw_outage",
    "seal",
    "to_publish",
]

COPIES = 16  # on a Redis Cluster: one copy of the marker per sixteenth of the slots
_SLOTS = 16384

_SIGNING = "mfa.marker"  # hotcache.signing purpose and identity of the marker
_IDENT = "mongo_live_until"

# Owed after an mfa fallback or any gate opening this process saw; sent with its next call that reaches Redis.
_NOTICE = recovery.OutageNotice(gate_opens=lambda: redis_gate.snapshot().opens)
# T as this process knows it without Redis: its own fallbacks + MFA_CODE_TTL, and every T it published.
_HORIZON = recovery.Watermark()


def saw_outage(now_ms: int, ttl_ms: int) -> None:
    """An mfa call fell back to MongoDB: a code may have been issued there at ``now_ms``."""
    _HORIZON.raise_to(now_ms + ttl_ms)
    _NOTICE.owe()


def to_publish() -> tuple[int, bool]:
    """(generation, whether the marker is owed); notices a gate that opened since the last call."""
    generation, owed, _ = _NOTICE.owed()
    return generation, owed


def published(generation: int, until_ms: int) -> None:
    """The marker of ``generation`` reached Redis holding ``until_ms``."""
    _HORIZON.raise_to(until_ms)
    _NOTICE.sent(generation)


def horizon_ms() -> int:
    """Until when this process knows, without Redis, that MongoDB may hold live codes (0: no outage known)."""
    return _HORIZON.value


def marker_key() -> str:
    # No hash tag: the marker is one key for every user, read in the same pipeline (not the same script)
    # as a user's keys, so each command still touches one slot.
    return keys.build(FEATURE, _IDENT)


@functools.cache
def _copy_tags() -> tuple[str, ...]:
    """The hash tags of the cluster copies: copy i's slot lies in the i-th sixteenth of the slots, so every master
    of a cluster split into at most 16 even ranges holds one. Fixed (the same in every process and release)."""
    tags = []
    for i in range(COPIES):
        low, high = i * _SLOTS // COPIES, (i + 1) * _SLOTS // COPIES
        j = 0
        while not low <= key_slot(f"{FEATURE}:marker{i}-{j}".encode()) < high:
            j += 1
        tags.append(f"marker{i}-{j}")
    return tuple(tags)


def marker_keys() -> list[str]:
    """Every key the marker is written to: the one key on a single server, its copies on a Redis Cluster."""
    if not hotcache_settings.REDIS_CLUSTER:
        return [marker_key()]
    return [keys.tagged(FEATURE, tag, _IDENT) for tag in _copy_tags()]


def marker_key_near(client: Any, key: str) -> str:
    """The marker's key to read with ``key``: the one key, or on a cluster the copy on ``key``'s node (so one
    pipeline stays one round trip); the first copy when that node holds none (an uneven split: 2 round trips)."""
    copies = marker_keys()
    if len(copies) == 1:
        return copies[0]
    node = client.get_node_from_key(key).name
    for copy in copies:
        if client.get_node_from_key(copy).name == node:
            return copy
    return copies[0]


def seal(until_ms: int) -> str:
    return signing.seal(_SIGNING, _IDENT, str(until_ms))


def marker_ms(raw: Any) -> int:
    """T from the marker's stored value; 0 when absent or not signed by us (then counted as tampered)."""
    if raw is None:
        return 0
    body = signing.unseal(_SIGNING, _IDENT, raw)
    if body is None or not re.fullmatch(r"[0-9]{1,16}", body):
        signing.tampered(FEATURE, marker_key(), "failed verification")
        return 0
    return int(body)
