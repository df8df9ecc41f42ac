"""The sessions' Redis copy: one read (entry + version), versioned writes, invalidations owed after an outage.

Every call goes through hotcache.backends.redis.call() (health gate, short timeouts, metering under
``sessions``). The database is the source of truth; this module only ever makes Redis hold what the
database holds, or nothing:

- ``reserve`` (inside the save's database transaction) bumps the version and drops the entry;
  ``publish`` (after commit) stores the saved session only if its version is still the newest.
- ``fill`` writes back a session read from the database after a miss, only if no save or delete
  happened since the miss (the version the reader saw) and no newer entry was published.
- ``invalidate`` (after a database delete) bumps the version and drops the entry.

A combined read (the session and the user its entry names) is a plain MGET of the four keys, 1 billed command,
when this process already knows which user the session names (``_users_seen``, a bounded map filled from the
entries it verified, filled and published); only a session it has not seen yet needs session_user_read.lua
(3 billed: EVALSHA and two MGETs), whose script learns the user from the entry. See docs/sessions.md ("The
combined read").

Whatever could not reach Redis (an outage, a reply lost after the command was sent) is owed: the session is
kept in ``pending_invalidations`` and invalidated before this process's next session read. See
docs/sessions.md ("Consistency").
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from hotcache import keys, metering, recovery, signing
from hotcache.backends import redis as redis_backend
from hotcache.exceptions import RedisUnavailable
from hotcache.sessions.entries import FEATURE, Entry, decode, encode, entry_key, version_key

__all__ = [
    "Lookup",
    "ReadPlan",
    "UserRead",
    "fill",
    "forget_users_seen",
    "invalidate",
    "log",
    "pending_invalidations",
    "publish",
    "queue_read_with_user",
    "read",
    "read_with_user",
    "remember_user",
    "remembered_user",
    "reserve",
    "settle_parts",
    "settle_read_with_user",
]

log = logging.getLogger("hotcache.sessions")

_RESERVE = redis_backend.Script("session_reserve")
_PUBLISH = redis_backend.Script("session_publish")
_FILL = redis_backend.Script("session_fill")
_READ_WITH_USER = redis_backend.Script("session_user_read")
_VERSION_SLACK = 86_400  # the counter outlives its entry by a day, so no in-flight fill or publish sees it vanish
_REPLAY_BATCH = 500  # owed invalidations per pipeline (one round trip each)

_USERS_SEEN_MAX = 16_384  # sessions whose user this process remembers (~1.5 MB at most)

# Sessions whose Redis copy may be stale because a write or delete could not reach Redis. Bounded: beyond
# max_items the oldest are dropped (logged and counted as sessions:pending_dropped).
pending_invalidations: recovery.Deferred[str] = recovery.Deferred(max_items=100_000)


@dataclass(frozen=True, slots=True)
class Lookup:
    entry: Entry | None  # None: a miss (absent, expired, or not trusted)
    version: bytes | None  # what the version counter held, for fill()


def read(session_key: str) -> Lookup | None:
    """The session's entry and version in one command (MGET); None when Redis is unavailable."""
    pending = pending_invalidations.snapshot() if pending_invalidations else set()

    def op(r: Any) -> Any:
        if pending:
            _invalidate_all(r, sorted(pending))
        return r.mget([entry_key(session_key), version_key(session_key)])

    try:
        raw, version = redis_backend.lean_call(FEATURE, op)
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        return None
    if pending:
        pending_invalidations.done(pending)
    entry = decode(session_key, raw) if raw is not None else None
    metering.event(FEATURE, "hit" if entry is not None else "miss")
    if entry is not None:
        remember_user(session_key, entry.user)
    return Lookup(entry, version)


@dataclass(frozen=True, slots=True)
class UserRead:
    """The cached user's raw values read with the session (not yet verified): hotcache.users checks them."""

    uid: str  # the user key part the session entry names (``u``)
    entry: bytes | None
    version: bytes | None


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """How a combined read was sent: a plain MGET of the session's keys and those of ``uid`` (``hinted``: this
    process knew the session's user, None for an anonymous session), or session_user_read.lua (not hinted)."""

    hinted: bool
    uid: str | None = None


_SCRIPT_PLAN = ReadPlan(hinted=False)
_users_seen: OrderedDict[str, str | None] = OrderedDict()
_users_seen_lock = threading.Lock()


def _plan(session_key: str) -> ReadPlan:
    with _users_seen_lock:
        if session_key not in _users_seen:
            return _SCRIPT_PLAN
        uid = _users_seen[session_key]
    return ReadPlan(hinted=True, uid=uid)


def remember_user(session_key: str, uid: str | None) -> None:
    """Note the user ``session_key``'s entry names (None: anonymous): only ever a hint of which keys to read, every
    value read is verified as before."""
    with _users_seen_lock:
        _users_seen[session_key] = uid
        _users_seen.move_to_end(session_key)
        while len(_users_seen) > _USERS_SEEN_MAX:
            _users_seen.popitem(last=False)


def _forget(session_key: str) -> None:
    with _users_seen_lock:
        _users_seen.pop(session_key, None)


def remembered_user(session_key: str) -> str | None:
    """The user key part ``session_key``'s entry named when this process last saw it; None: unknown or anonymous."""
    with _users_seen_lock:
        return _users_seen.get(session_key)


def forget_users_seen() -> None:
    """Forget every session's remembered user (hotcache.testing.reset(): each test starts like a new process)."""
    with _users_seen_lock:
        _users_seen.clear()


def _mget_keys(session_key: str, plan: ReadPlan) -> list[str]:
    names = [entry_key(session_key), version_key(session_key)]
    if plan.uid is not None:
        from hotcache.users import entries as user_entries

        names += [user_entries.entry_key(plan.uid), user_entries.version_key(plan.uid)]
    return names


def _as_script_reply(plan: ReadPlan, values: list[Any]) -> list[Any]:
    """An MGET's values in session_user_read.lua's reply shape: {entry, version, u, user entry, user version}."""
    if plan.uid is None:
        return [values[0], values[1], None, None, None]
    return [values[0], values[1], plan.uid, values[2], values[3]]


def read_with_user(session_key: str) -> tuple[Lookup, UserRead | None] | None:
    """The session and the user its entry names, in one round trip; None when Redis is unavailable.

    A plain MGET of the session's and the user's keys (1 billed) when this process knows the session's user
    (``_users_seen``); else session_user_read.lua (3 billed), which derives the user's keys from the entry. Only
    for a single server (the keys span hash tags): callers go through hotcache.sessions.combined.read_with_user,
    which takes the cluster's path there, and use read() while invalidations are owed."""
    plan = _plan(session_key)

    def op(r: Any) -> Any:
        if plan.hinted:
            return _as_script_reply(plan, r.mget(_mget_keys(session_key, plan)))
        return _READ_WITH_USER(r, *_read_with_user_args(session_key))

    try:
        raw = redis_backend.lean_call(FEATURE, op)
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        return None
    return _settle(session_key, raw)


def queue_read_with_user(pipe: Any, session_key: str) -> ReadPlan:
    """Add the combined read to ``pipe`` (another feature's pipeline); its reply and the plan returned here go
    to settle_read_with_user()."""
    plan = _plan(session_key)
    if plan.hinted:
        pipe.execute_command("MGET", *_mget_keys(session_key, plan))
    else:
        _READ_WITH_USER.queue(pipe, *_read_with_user_args(session_key))
    return plan


def settle_read_with_user(
    session_key: str, raw: Any, plan: ReadPlan | None = None
) -> tuple[Lookup, UserRead | None] | None:
    """The combined read's pipeline reply (metered under ``sessions``); None when it failed there (NOSCRIPT...).
    ``plan``: what queue_read_with_user() returned (None: the script was queued)."""
    if isinstance(raw, Exception):  # a pipeline error in place of the reply (NOSCRIPT): the store reads again
        return None
    with metering.feature(FEATURE):
        if plan is not None and plan.hinted:
            return _settle(session_key, _as_script_reply(plan, raw))
        return _settle(session_key, _READ_WITH_USER.reply(raw))


def settle_parts(
    session_key: str, entry: Any, version: Any, uid: str | None, user_entry: Any, user_version: Any
) -> tuple[Lookup, UserRead | None]:
    """The combined read made of separate replies (Redis Cluster: the session's and the user's MGETs, each on its
    node; hotcache.sessions.combined): checked exactly as the script's reply."""
    return _settle(session_key, (entry, version, uid, user_entry, user_version))


def combined_read_possible(client: Any) -> bool:
    """Whether the session-and-user script can run: a single server (Redis Cluster forbids the undeclared keys)."""
    from redis.cluster import RedisCluster

    return not isinstance(client, RedisCluster)


def _read_with_user_args(session_key: str) -> tuple[list[str], list[str]]:
    return [entry_key(session_key), version_key(session_key)], [keys.prefix()]


def _settle(session_key: str, raw: Any) -> tuple[Lookup, UserRead | None]:
    entry_raw, version, uid, user_entry, user_version = raw
    entry = decode(session_key, entry_raw) if entry_raw is not None else None
    metering.event(FEATURE, "hit" if entry is not None else "miss")
    if entry is not None:
        remember_user(session_key, entry.user)
    user = None
    if entry is not None and uid is not None and entry.user is not None and _text(uid) == entry.user:
        user = UserRead(entry.user, user_entry, user_version)  # the verified entry names the user that was read
    return Lookup(entry, version), user


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def fill(session_key: str, version: bytes | None, data: str, expiry_ms: int, user: str | None, ttl: int) -> bool:
    """Store a session read from the database after a miss, unless a write or delete happened since."""
    if ttl <= 0:
        return False
    payload = encode(session_key, data, expiry_ms, user)
    seen = version if version is not None else b""
    try:
        stored = redis_backend.call(
            FEATURE, lambda r: _FILL(r, [entry_key(session_key), version_key(session_key)], [seen, payload, ttl])
        )
    except RedisUnavailable as exc:
        if exc.maybe_applied:  # it may have stored a session a concurrent save has just replaced
            _owe(session_key)
        return False
    if stored:
        remember_user(session_key, user)
    return bool(stored)


def reserve(session_key: str, ttl: int) -> int | None:
    """The version of a save about to commit (entry dropped); None when Redis is unavailable (then owed)."""
    try:
        version, reset = redis_backend.call(
            FEATURE,
            lambda r: _RESERVE(r, [entry_key(session_key), version_key(session_key)], [max(ttl, 0) + _VERSION_SLACK]),
        )
    except RedisUnavailable:
        _owe(session_key)
        return None
    if reset:
        signing.tampered(FEATURE, version_key(session_key), "was not a version counter; reset")
    return int(version)


def publish(session_key: str, version: int, data: str, expiry_ms: int, user: str | None, ttl: int) -> bool:
    """Store a committed save if ``version`` is still the newest; a failure is owed (the entry stays absent)."""
    if ttl <= 0:
        return False
    payload = encode(session_key, data, expiry_ms, user)
    try:
        stored = redis_backend.call(
            FEATURE,
            lambda r: _PUBLISH(r, [entry_key(session_key), version_key(session_key)], [version, payload, ttl]),
        )
    except RedisUnavailable as exc:
        if exc.maybe_applied:
            _owe(session_key)  # stored or not: a later save's publish may have been refused meanwhile
        return False
    if stored:
        metering.event(FEATURE, "saved")
        remember_user(session_key, user)
    return bool(stored)


def invalidate(session_key: str) -> bool:
    """Drop a deleted session's entry and bump its version; False when owed (Redis unavailable)."""
    try:
        redis_backend.call(FEATURE, lambda r: _invalidate_all(r, [session_key]))
    except RedisUnavailable:
        _owe(session_key)
        return False
    _forget(session_key)
    metering.event(FEATURE, "invalidated")
    return True


def _invalidate_all(r: Any, session_keys: list[str]) -> None:
    """Invalidate each session: the first alone (EVAL on NOSCRIPT), the rest in pipelines of _REPLAY_BATCH."""
    if not session_keys:
        return
    first = session_keys[0]
    _check_reset(first, _RESERVE(r, [entry_key(first), version_key(first)], [_VERSION_SLACK]))
    for start in range(1, len(session_keys), _REPLAY_BATCH):
        batch = session_keys[start : start + _REPLAY_BATCH]
        # Each script sent once (on Redis Cluster redis-py's pipeline would re-send a batch whose reply timed out).
        calls = [(_RESERVE, [entry_key(key), version_key(key)], [_VERSION_SLACK]) for key in batch]
        for key, reply in zip(batch, redis_backend.run_scripts(r, calls), strict=True):
            _check_reset(key, reply)


def _check_reset(session_key: str, reply: Any) -> None:
    if isinstance(reply, Exception):
        raise reply
    if reply[1]:
        signing.tampered(FEATURE, version_key(session_key), "was not a version counter; reset")


def _owe(session_key: str) -> None:
    """Keep ``session_key``'s Redis copy for invalidation before this process's next session read."""
    dropped = pending_invalidations.add(session_key)
    metering.event(FEATURE, "deferred")
    if dropped:
        metering.event(FEATURE, "pending_dropped", dropped)
        log.warning(
            "hotcache: %d owed session invalidations were dropped (over %d); their Redis copies may be stale",
            dropped,
            pending_invalidations.max_items,
        )
