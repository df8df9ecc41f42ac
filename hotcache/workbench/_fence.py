"""The recovery fence: a process that wrote to workbench_active because Redis was unreachable owes Redis a
sealed fence value (a hotcache.recovery.OutageNotice), sent with its next workbench call (to that session's
bucket in its script, then to every other bucket in one pipeline). While the fence is up, each session is
compared with its MongoDB copy once before Redis serves or changes it. A write that a
Redis which still answers refused (memory full) raises a fence on that one session instead, by a deletion.
See docs/workbench.md#recovery-after-an-outage and #a-redis-that-refuses-writes.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from typing import Any

from hotcache import recovery, signing
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import RedisUnavailable
from hotcache.workbench._envelope import _FENCE_RECORD, _FOREIGN, _text
from hotcache.workbench._layout import _UNFENCE, FEATURE, _buckets, _data_key, _fence_key

_notice = recovery.OutageNotice()


@dataclass(frozen=True, slots=True)
class _Fence:
    """What a workbench call sends to raise the fence: the value ('' when none is owed), its TTL, and the
    notice generation to settle once Redis took it."""

    value: str
    ttl: int
    generation: int


def _raise_fence_later() -> None:
    # Sealed, so a process tells a fence hotcache raised from one written by someone else. One value for every
    # bucket, sealed under the single-tag layout's fence key.
    _notice.owe(signing.seal(_FENCE_RECORD, _fence_key(), secrets.token_hex(8)))


def _fence_args() -> _Fence:
    generation, owed, value = _notice.owed()
    return _Fence(str(value) if owed and value else "", int(hotcache_settings.WORKBENCH_IDLE_TIMEOUT), generation)


def _fence_sent(fence: _Fence, bucket: str) -> None:
    """The script raised ``fence`` in ``bucket``: raise it in every other bucket (one pipeline), then it is paid.

    If that pipeline fails the fence stays owed (the next call sends it again); the call itself stands.
    """
    if not fence.value:
        return
    others = [b for b in _buckets() if b != bucket]
    if others:

        def raise_all(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            for b in others:
                pipe.set(_fence_key(b), fence.value, ex=fence.ttl)
            pipe.execute()

        try:
            redis_backend.call(FEATURE, raise_all)
        except RedisUnavailable:
            return
    _notice.sent(fence.generation)


def _current_fence(bucket: str | None = None) -> str:
    """The recovery fence of ``bucket`` if it is up and hotcache raised it, else ''."""
    return _current_fences([bucket])[bucket]


def _current_fences(buckets: list[str | None]) -> dict[str | None, str]:
    """Each bucket's recovery fence if it is up and hotcache raised it, else '' (one pipeline). Any other value
    is lowered (tampered)."""

    def read(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for b in buckets:
            pipe.get(_fence_key(b))
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies

    out: dict[str | None, str] = dict.fromkeys(buckets, "")
    try:
        raws = redis_backend.call(FEATURE, read)
    except RedisUnavailable:
        return out
    for b, raw in zip(buckets, raws, strict=True):
        if raw is None:
            continue
        if not isinstance(raw, Exception) and signing.unseal(_FENCE_RECORD, _fence_key(), raw) is not None:
            out[b] = _text(raw)
            continue
        key = _fence_key(b)
        signing.tampered(FEATURE, key, "is not a fence hotcache raised")
        foreign = raw if isinstance(raw, bytes) else _FOREIGN
        try:
            redis_backend.call(FEATURE, functools.partial(_UNFENCE, keys=[key], args=[foreign]))
        except RedisUnavailable:
            pass
    return out


def _fence_session(session_id: str) -> None:
    """Before a write of the session goes to MongoDB because Redis refused it (or refuses calls: the gate is
    open for a server state): delete its field t, so that every process's next load, save or end of it in
    Redis compares it with its MongoDB copy first (and a full Redis refuses the load's refresh script).

    A deletion, which a full Redis never refuses, sent past a gate that Redis's refusals opened: so the
    first refused write of the session is never served from Redis's older copy. A read-only replica refuses
    it too (nothing to do there: see docs/workbench.md#a-redis-that-refuses-writes); an unreachable Redis is
    not tried.
    """
    key = _data_key(session_id)
    try:
        redis_backend.call(FEATURE, lambda r: r.hdel(key, "t"), deletion=True)
    except RedisUnavailable:
        pass
