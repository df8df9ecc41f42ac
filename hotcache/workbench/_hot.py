"""The Redis path of save(), load() and end() (one EVALSHA each in the common case), handing each save's
durable copy to _durable (written off the request path), and counts(). Redis unreachable: the calls go to
_fallback. See docs/workbench.md.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from hotcache import clock, metering, signing
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import (
    RedisUnavailable,
)
from hotcache.workbench._durable import writer
from hotcache.workbench._envelope import (
    _ENDED_RECORD,
    _FOREIGN,
    _NONE,
    _digest,
    _Envelope,
    _Hot,
    _observed,
    _open_envelope,
    _open_hot,
    _recall,
    _remember,
    _seal_envelope,
    _tampered,
    _token,
)
from hotcache.workbench._fallback import _mongo_end, _mongo_load, _mongo_save
from hotcache.workbench._fence import _fence_args, _fence_sent, _fence_session
from hotcache.workbench._layout import (
    _END,
    _LOAD,
    _SAVE,
    FEATURE,
    _bucket,
    _claims_key,
    _data_key,
    _ended_key,
    _ended_queue,
    _fence_key,
    _gone_key,
    _index_key,
    _key_ttl,
    _refresh_every,
    _walked,
)
from hotcache.workbench._recover import _adopt_legacy, _migrate, _reconcile
from hotcache.workbench._results import Conflict, OwnerConflict, Session, SessionCounts
from hotcache.workbench._state import (
    _ANY,
    _check_expected_version,
    _check_id,
    _check_owner,
    _encode_state,
    _owner_refused,
)

log = logging.getLogger("hotcache.workbench")

_SAVE_ATTEMPTS = 10  # compare-and-set rounds of one save while others keep saving the same session


def save(
    session_id: str,
    state: dict[str, Any],
    owner: str | int | None = None,
    expected_version: int | None = None,
    *,
    expected_owner: str | int | None = _ANY,
) -> int:
    """Store ``state`` as the session's next version and return it.

    With ``expected_version`` the write happens only if the session is at that version (0: only if it does
    not exist yet); otherwise Conflict. ``owner``: who a session this save creates belongs to; for an existing
    session None keeps its owner and any other owner raises OwnerConflict, unless ``expected_owner`` equals
    the current owner (None: it has none), which transfers it to ``owner``. ``expected_owner`` alone only
    guards the save; it is not consulted when the save creates the session. Renews the idle lifetime.
    InvalidInput (a ValueError naming the field; nothing written) for an invalid id, owner, version or state.
    """
    session_id = _check_id(session_id)
    owner = _check_owner(owner)
    if expected_owner is not _ANY:
        expected_owner = _check_owner(expected_owner, "expected_owner")
    expected_version = _check_expected_version(expected_version)
    text = _encode_state(state)
    # The incarnation token of a session this save creates, chosen here: if Redis ran the save but its reply
    # was lost, the fallback creates the SAME incarnation on MongoDB, and the two stores hold one session.
    token = _token()
    try:
        version = _redis_save(session_id, text, owner, expected_version, expected_owner, token)
    except RedisUnavailable as exc:
        metering.event(FEATURE, "fallback")
        if exc.answered or exc.gate_open:
            # Redis refused it but may still serve this session's older copy to other processes.
            _fence_session(session_id)
        version = _mongo_save(
            session_id, text, owner, expected_version, expected_owner, token, in_redis=exc.maybe_applied
        )
    metering.event(FEATURE, "saved")
    return version


@dataclass(slots=True)
class _SaveRequest:
    session_id: str
    text: str
    digest: str
    owner: str | None
    expected: int | None
    expected_owner: Any
    token: str
    now: float

    def create(self) -> _Envelope:
        return _seal_envelope(
            self.session_id,
            version=1,
            token=self.token,
            owner=self.owner,
            created=self.now,
            updated=self.now,
            digest=self.digest,
        )

    def plan(self, seen: _Envelope | None, fresh: bool) -> tuple[bytes, _Envelope | None, _Envelope | None]:
        """What to send: (the envelope the next one replaces, the next envelope, the creation envelope).

        The script writes the next envelope if Redis still holds ``seen``, else the creation envelope if
        there is no session (sent when none is known: a blind save, or expected_version=0), else nothing
        (it hands back what it holds).
        Raises Conflict or OwnerConflict, but only on an envelope just read from Redis (``fresh``): a
        remembered one may be stale, so it is looked at again instead.
        """
        if seen is None:
            return _NONE, None, (self.create() if not self.expected else None)
        if self.expected == 0:
            if fresh:
                self.conflict(seen.version)
            return _NONE, None, self.create()
        wrong_version = self.expected is not None and seen.version != self.expected
        if wrong_version or _owner_refused(seen.owner, self.owner, self.expected_owner):
            if not fresh:
                return seen.raw, None, None
            if wrong_version:
                self.conflict(seen.version)
            expected = self.expected_owner is not _ANY
            raise OwnerConflict(self.session_id, self.owner, seen.owner, expected=expected)
        following = _seal_envelope(
            self.session_id,
            version=seen.version + 1,
            token=seen.token,
            owner=self.owner if self.owner is not None else seen.owner,
            created=seen.created,
            updated=self.now,
            digest=self.digest,
        )
        # No creation envelope: if the session is gone since (ended elsewhere), the next round creates it.
        return seen.raw, following, None

    def conflict(self, current: int) -> None:
        metering.event(FEATURE, "conflict")
        raise Conflict(self.session_id, int(self.expected or 0), current)


def _redis_save(
    session_id: str, text: str, owner: str | None, expected: int | None, expected_owner: Any, token: str
) -> int:
    """The save on Redis: a compare-and-set of the session's sealed envelope (wb_save.lua).

    Every outcome (next version, Conflict, OwnerConflict) is decided here on an envelope Python verified: the
    one this process saw last (one round trip if it is still current), else the one Redis hands back.
    """
    now = clock.time()
    request = _SaveRequest(session_id, text, _digest(text), owner, expected, expected_owner, token, now)
    ttl, refresh = _key_ttl(), _refresh_every()
    bucket = _bucket(session_id)
    keys_ = [_data_key(session_id), _index_key(bucket), _fence_key(bucket)]
    seen, fresh = _recall(session_id), False
    checked = migrated = False
    for _ in range(_SAVE_ATTEMPTS):
        base, following, create = request.plan(seen, fresh)
        fence = _fence_args()
        args = [text, base, following.raw if following else _NONE, repr(now), ttl, session_id]
        args += [fence.value, fence.ttl, create.raw if create else _NONE, refresh]
        out = redis_backend.call(FEATURE, functools.partial(_SAVE, keys=keys_, args=args))
        _fence_sent(fence, bucket)
        status = int(out[0])
        written = following if status == 1 else create if status == 2 else None
        if written is not None:
            _remember(session_id, written)
            if hotcache_settings.WORKBENCH_DURABLE_SAVES:
                writer.add(session_id, written, text)
            return written.version
        observed = _observed(out[1])
        current = _open_envelope(session_id, observed)
        if observed and current is None:
            # Not an envelope hotcache sealed: absent. Its durable copy replaces it (or it is deleted).
            _tampered(session_id, observed)
            hot = _reconcile(session_id, observed, tampered=True)
        elif status == -2:
            # A recovery fence is up and this session was not compared with its MongoDB copy yet.
            if checked:
                msg = f"workbench session {session_id!r}: recovery check did not settle"
                raise RedisUnavailable(msg)
            checked = True
            hot = _reconcile(session_id, observed, current)
        elif current is None and expected and not migrated:
            # The session may live in workbench_active (saved there during a Redis outage): continue from it.
            migrated = True
            hot = _migrate(session_id)
            if hot is None:
                request.conflict(0)
        else:
            if current is None and expected:
                request.conflict(0)
            seen, fresh = current, True
            continue
        seen, fresh = (hot.envelope if hot is not None else None), True
    # Others kept saving this session between every look and write (a blind save under heavy contention).
    metering.event(FEATURE, "conflict")
    current_version = seen.version if seen is not None else 0
    raise Conflict(session_id, expected if expected is not None else current_version, current_version)


def load(session_id: str) -> Session | None:
    """The session, or None if there is none (never saved, ended, or persisted as abandoned). Renews its lifetime.

    A Redis copy that fails verification is absent: its durable copy is served (and put back), else None.
    """
    session_id = _check_id(session_id)
    now = clock.time()
    bucket = _bucket(session_id)
    keys_ = [_data_key(session_id), _index_key(bucket), _fence_key(bucket)]
    fence = _fence_args()
    try:
        row = _read_session(keys_, now, session_id) if not fence.value else None
        if row is None:
            # A refresh is due (or a fence is owed): the script reads and refreshes atomically.
            load_args = [repr(now), _key_ttl(), session_id, fence.value, fence.ttl]
            row = redis_backend.call(FEATURE, lambda r: _LOAD(r, keys_, load_args))
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        session = _mongo_load(session_id)
    else:
        _fence_sent(fence, bucket)
        hot = _hot_from_row(session_id, row)
        session = hot.session(session_id) if hot is not None else None
    if session is not None:
        metering.event(FEATURE, "loaded")
    return session


def _read_session(keys_: list[str], now: float, session_id: str) -> Any:
    """The common load: GET of the fence and HMGET of the session in one pipeline (2 billed commands).

    Returns a wb_load-shaped row (False: no session), or None when the session's lifetime is due for a
    refresh (field t older than the refresh interval, or absent): then wb_load.lua reads and refreshes at once.
    Field t absent also flags a session whose write Redis refused (_fence_session): wb_load.lua, whose first
    write a full Redis refuses, then asks for the check against MongoDB.
    Not a script, so not atomic; the fence is read first, so a session read without a check was either read
    before a fence went up (as an atomic load just before it would) or written since by a call that checked
    it under that fence. A load never writes, so it cannot undo anything.
    """
    data, _index, fence_key = keys_

    def read(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        pipe.get(fence_key)
        pipe.hmget(data, "s", "m", "k", "t")
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies

    fence, row = redis_backend.call(FEATURE, read)
    if isinstance(row, Exception):
        return [b"", _FOREIGN, 0]  # not a hash: a key hotcache did not write
    state, envelope, checked, refreshed = row
    if state is None and envelope is None:
        # No session, or a hash without one (one more command, on a miss only).
        return False if not redis_backend.call(FEATURE, lambda r: r.exists(data)) else None
    try:
        due = not abs(now - float(refreshed)) < _refresh_every()  # NaN: due
    except (TypeError, ValueError):
        due = True  # flagged by a refused write, written before field t existed, or not a time
    if due:
        return None
    check = 0
    if fence is not None:
        check = int(isinstance(fence, Exception) or checked != fence)
    return [state or b"", envelope or _FOREIGN, check]


def _hot_from_row(session_id: str, row: Any) -> _Hot | None:
    """The session a wb_load reply holds, verified; a miss, an outage copy or a tampered copy is settled first."""
    if not row:
        # A Redis miss may be a session that lived on MongoDB during an outage: bring it back.
        _remember(session_id, None)
        return _migrate(session_id)
    state, observed, check = row[0], _observed(row[1]), int(row[2])
    hot = _open_hot(session_id, state, observed)
    if hot is None:
        why = "holds a state its envelope does not name" if _open_envelope(session_id, observed) else None
        _tampered(session_id, observed, why)
        return _reconcile(session_id, observed, tampered=True)
    if check:
        # After an outage: MongoDB may hold a newer version saved while Redis was away.
        return _reconcile(session_id, observed, hot.envelope, hot=hot)
    _remember(session_id, hot.envelope)
    return hot


def end(session_id: str) -> bool:
    """End the session: it leaves the hot store at once and is queued for history. False if there was none.

    If Redis's reply is lost and MongoDB holds no copy, True (the outcome is unknown; the session reaches
    history once either way: see "Lost replies" in the module docstring). A Redis copy that fails
    verification is not ended from Redis: its durable copy is ended instead (False if there is none).
    """
    session_id = _check_id(session_id)
    now = clock.time()
    token = _token()
    ended_key = _ended_key(session_id, token)
    bucket = _bucket(session_id)
    keys_ = [_data_key(session_id), _index_key(bucket), _ended_queue(bucket), ended_key, _fence_key(bucket)]
    keys_.append(_gone_key(session_id))
    record = signing.seal_json(_ENDED_RECORD, ended_key, {"e": now})
    args = [repr(now), int(hotcache_settings.WORKBENCH_ENDED_TTL), f"{session_id}:{token}", session_id]
    gone = "1" if hotcache_settings.WORKBENCH_DURABLE_SAVES else ""  # the ended record the recovery check reads
    _remember(session_id, None)
    try:
        ended: bool | None = None
        for attempt in range(3):
            fence = _fence_args()
            end_args = [*args, fence.value, fence.ttl, record, gone]
            out = redis_backend.call(FEATURE, functools.partial(_END, keys=keys_, args=end_args))
            _fence_sent(fence, bucket)
            status = int(out[0])
            observed = _observed(out[1]) if len(out) > 1 else _NONE
            current = _open_envelope(session_id, observed)
            if status == 1 and _open_hot(session_id, out[2], observed) is not None:
                assert current is not None
                writer.drop(session_id, current)  # its ended mark goes with this process's next bulk
                ended = True
            elif status == 1:
                # Redis ended a record hotcache did not write: the persister will drop it, so the session
                # reaches history from its durable copy instead (False without one: there was no session).
                why = "holds a state its envelope does not name" if current is not None else None
                _tampered(session_id, observed, why)
                ended = _mongo_end(session_id, redis_gone=True)
            elif status == 0 and attempt < 2 and _adopt_legacy(session_id):
                continue  # it was in the single-tag layout: now in its bucket, end it there
            elif status in (-1, -2) and attempt < 2:
                tampered = status == -1 or current is None
                if tampered:
                    _tampered(session_id, observed)
                _reconcile(session_id, observed, current, tampered=tampered)
                continue
            break
        if ended is None:
            # Saved on MongoDB during an outage and not yet loaded since: end it there.
            ended = _mongo_end(session_id)
    except RedisUnavailable as exc:
        metering.event(FEATURE, "fallback")
        if exc.answered or exc.gate_open:
            _fence_session(session_id)  # as in save(): other processes must not serve the ended session
        # Reply lost (maybe_applied): Redis may or may not have ended it. _mongo_end writes history from the
        # MongoDB copy (same incarnation token, so Redis's ended record, if any, lands on the same _id) and
        # leaves a tombstone that drops Redis's copy if the end did not run there. Without a MongoDB copy the
        # outcome is unknown: answer True; the session reaches history once either way (as ended, or as idle).
        ended = _mongo_end(session_id) or exc.maybe_applied
    if ended:
        metering.event(FEATURE, "ended")
    return ended


def counts() -> SessionCounts:
    """How many sessions are where, from the Redis indexes of every bucket: one pipeline of 4 O(1)/O(log n) commands
    per bucket (one round trip on a single server, one per master on a cluster).

    Raises RedisUnavailable (the figures live only in Redis).
    """
    stale = clock.time() - float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER)

    def read(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for b in _walked():
            pipe.zcard(_index_key(b))
            pipe.zcount(_index_key(b), "-inf", stale)
            pipe.zcard(_ended_queue(b))
            pipe.zcard(_claims_key(b))
        replies: list[Any] = pipe.execute()
        return replies

    replies = [int(n) for n in redis_backend.call(FEATURE, read)]
    active, idle, ended, claimed = (sum(replies[i::4]) for i in range(4))
    return SessionCounts(active=active, idle=idle, ended=ended, claimed=claimed)
