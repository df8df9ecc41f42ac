"""Workbench sessions: hot JSON state in Redis with optimistic versions; every ended or abandoned session
reaches MongoDB history (``workbench_history``) exactly once.

Redis layout (one hash tag, ``{workbench:s}``, because the Lua scripts touch the index and the sessions
together; fine for the volumes a workbench has):

    d:<id>          HASH s=state JSON, m=the sealed envelope (version, owner, incarnation token, created,
                    updated, SHA-256 of s; hotcache.signing under the key's name), k=recovery check mark.
                    TTL WORKBENCH_IDLE_TIMEOUT, renewed by every save and load (the idle lifetime).
    idx             ZSET id -> last seen (hotcache clock time, so tests age sessions with the clock).
    e:<id>:<tok>    HASH an ended session, renamed away from d:<id> by end() (immutable; TTL WORKBENCH_ENDED_TTL),
                    plus e=the sealed end time.
    ended           ZSET "<id>:<tok>" -> end time: the queue for history.
    claims, owners  ZSET member -> claim time and HASH member -> run id: what a persister run has taken.
    fence           STRING the sealed recovery fence (below).

Signed records: Python opens every envelope it acts on and checks the state against it; Lua never decides on a
value it cannot verify. save() is a compare-and-set: Python builds and seals the next envelope from one it
verified (the one this process saw last, remembered per session) and the script writes only if the session
still holds exactly that one, else hands the current one back. A record that fails verification is absent:
replaced by its durable copy from workbench_active, or deleted (counted as ev:workbench:tampered). Counts and
the queues' scores are not signed: tampering with them can delay or hasten persisting, never inject a value.

save() is one EVALSHA when this process saw the session's current envelope last (or creates it), else two;
load() one EVALSHA (read + TTL + index), end() one EVALSHA (rename to an ended key + queue).

Owners: a session's owner is set by the save that creates it; save(owner=None) keeps it; a save naming
another owner raises OwnerConflict unless expected_owner equals the current owner (a deliberate transfer).

Persisting (``persist()``, run by the beat task ``hotcache.tasks.persist_workbench_sessions`` and by
``manage.py persist_workbench``) is claim -> write -> ack, so no lock is needed for correctness:

1. claim (Lua): take stale claims of crashed runs, then ended sessions, then sessions idle longer than
   WORKBENCH_PERSIST_IDLE_AFTER, moving them out of their queue into ``claims`` owned by this run;
2. read the claimed sessions (one pipeline) and bulk-upsert them into ``workbench_history`` (one
   MongoDB round trip per batch of WORKBENCH_PERSIST_BATCH). A history record is keyed
   ``<id>:<incarnation token>`` and guarded by ``rank`` (2*version + ended): a replay, or a second
   worker writing the same session, matches nothing, upserts on an existing ``_id`` and gets E11000,
   which means "already persisted"; a newer version of the same session replaces the older record.
   (The key carries the incarnation token, not the version, so a session edited after it was persisted
   as idle still has one history record, and a reused id never collides with an old session.)
3. ack (Lua): only after MongoDB acknowledged, delete ended keys and idle sessions whose version is the
   one written and that nobody touched since the claim (an edited session stays hot).

A crash or MongoDB outage after the claim leaves the members in ``claims``; a run that knows it failed
makes them stale at once, a crashed run's claims go stale after WORKBENCH_CLAIM_TIMEOUT; the next run
takes them over. Keyspace notifications are not used: they are lossy and fire after the value is gone.
The check hotcache.E051 keeps PERSIST_IDLE_AFTER + PERSIST_INTERVAL + CLAIM_TIMEOUT below IDLE_TIMEOUT,
so an abandoned session reaches history before Redis would expire it.

Redis down (policy: degrade to MongoDB, never fail): save/load/end work on the ``workbench_active``
collection with the same versions and conflicts (find_one_and_update filtered on the version).

Durable saves (WORKBENCH_DURABLE_SAVES, default True): every successful Redis save also writes the session
to ``workbench_active`` with ONE conditional upsert, filtered on ``version < new`` (or a durable copy of
another incarnation); E11000 from the upsert means a newer version is already there. So a session saved
on Redis is loadable and savable (same version) on MongoDB during a later outage. Loads stay one Redis
round trip and no MongoDB op. MongoDB down during a save: the save succeeds on Redis (log once, event
``durable_save_failed``); in that double-failure window a later Redis outage does not see the newest
version. Document ``origin``: "redis" (durable copy; Redis is authoritative), "fallback" (written during an
outage; may be newer than Redis), "fork" (an outage incarnation under an id Redis holds another one of).

Recovery rule (Redis returns still holding v5 while MongoDB has the outage's v6): a process that wrote on
MongoDB during the outage raises a *fence* in Redis (``fence`` key, a sealed random value) with its next workbench
call. While the fence is up, load/save/end of a session not yet checked under that fence value (hash
field ``k``) first compare it with its MongoDB document (one read) and fix Redis with ``wb_reconcile``:
a newer version of the SAME incarnation replaces Redis's copy; an older one, or another incarnation, never
does; a tombstone (below) drops the incarnation it names. The persister reconciles all "fallback" documents
first in every run and then lowers the fence (compare-and-delete, so a fence raised again stays). Limits:
between Redis's return and the first call of a process that wrote during the outage (or the next persister
run, if that process died), another process can read the older Redis copy; a partial partition (Redis down
for some processes only) can fork versions -- no design without consensus avoids that.

end() removes the durable copy (one MongoDB op per end; the persister's idle sweep is the backstop if it
fails); the persister removes the copies of sessions it persisted as idle in one delete per batch. end()
during an outage writes history directly and, when Redis may hold that incarnation, leaves a tombstone
(``ended``) so Redis's copy is dropped instead of served when it returns; a new incarnation saved over a
tombstone remembers it (``gone_token``). History stays exactly once: its _id is ``<id>:<token>`` and
rank-guarded, so a leftover copy swept later is a no-op. The idle sweep skips documents whose incarnation
Redis holds (loads do not touch MongoDB, so their ``last_seen`` is old) and touches them.

Lost replies (Redis ran a command but died before answering: ``RedisUnavailable.maybe_applied``): save()
picks the incarnation token of a session it may create in Python and sends it to wb_save; the MongoDB
fallback reuses it. So a creation that Redis applied and whose reply was lost is the SAME incarnation in
both stores (never a second one): the outage edits continue on MongoDB, the recovery rule above keeps the
newer version, and history gets one record (``<id>:<token>``, rank-guarded). Such a fallback document is
marked ``from_redis`` (Redis may hold it), so an end() during the outage leaves a tombstone that drops
Redis's copy. end() with a lost reply ends the session from its MongoDB copy like any outage end (history
now, tombstone for Redis's copy in case the end did not run there; if it did, its ended record lands on the
same history _id). With no MongoDB copy the outcome is unknown and end() answers True: the session reaches
history exactly once either way, as "ended" if Redis ran the end, else as "idle" once abandoned (until then
it stays loadable). Nothing is lost and nothing is recorded twice in either case.

With durable saves off: a session saved to Redis before an outage is not visible during it (load returns
None until Redis is back; nothing is lost). A load that misses in Redis costs one MongoDB read (the
outage-copy check) either way; a miss that finds a copy moves it into Redis and continues from its version.
With both Redis and MongoDB down, save/load/end raise BackendUnavailable. A blind save (no
expected_version) of an id that Redis does not know starts a new incarnation even if ``workbench_active``
holds one from the outage (a "fork"); both reach history.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import re
import secrets
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hotcache import clock, keys, metering, signing
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import (
    BackendUnavailable,
    DuplicateKey,
    HotcacheError,
    InvalidName,
    MongoUnavailable,
    RedisUnavailable,
)

__all__ = [
    "Conflict",
    "HistoryEntry",
    "InvalidInput",
    "OwnerConflict",
    "PersistResult",
    "Session",
    "SessionCounts",
    "counts",
    "end",
    "history",
    "load",
    "persist",
    "save",
]

log = logging.getLogger("hotcache.workbench")

FEATURE = "workbench"
HISTORY = "workbench_history"
ACTIVE = "workbench_active"
# Ids are kept verbatim in keys and history ids: no ':' (the separator of queue members and history ids).
_ID_PATTERN = r"[A-Za-z0-9_.@+\-]{1,64}"
_OWNER_PATTERN = r"[A-Za-z0-9_.:@+\-]{1,128}"
_QUEUE_TTL_FACTOR = 4  # the queue keys outlive every session in them
_MAX_VERSION = 2**53 - 1  # versions stay exact in JSON, Lua and MongoDB's int64
_SAVE_ATTEMPTS = 10  # compare-and-set rounds of one save while others keep saving the same session
_HINTS = 4096  # sessions whose current envelope a process remembers (a save of one of them is one round trip)

# Record kinds signed with hotcache.signing. The identity is the key a record was written under: a session's
# data key for its envelope (end() renames it along, the persister checks it as such), the ended key for the
# end time, the fence key for the fence. So no record verifies under another session or kind.
_SESSION_RECORD = "workbench.session"
_ENDED_RECORD = "workbench.ended"
_FENCE_RECORD = "workbench.fence"
_ENVELOPE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "v": int, "g": str, "o": (str, type(None)), "c": (int, float), "u": (int, float), "h": str,
}
# What the scripts report for no session, and for a key hotcache did not write (not a hash, or no envelope).
_NONE, _FOREIGN = b"", b"!"
_MEMBER = re.compile(
    r"e:(?P<ended>[A-Za-z0-9_.@+\-]{1,64}):(?P<token>[A-Za-z0-9]{1,64})|i:(?P<idle>[A-Za-z0-9_.@+\-]{1,64})"
)

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


class InvalidInput(InvalidName):
    """An argument hotcache refuses before touching any store (so a ValueError, and an InvalidName).

    ``field`` names the argument: "session_id", "owner", "expected_owner", "expected_version", "state" or
    "limit"; the message says why. HTTP glue answers 400 naming that field.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class OwnerConflict(HotcacheError, ValueError):
    """save() would change who owns the session; nothing was written.

    Pass ``expected_owner=<its current owner>`` to transfer it on purpose, or save under a new session id.
    ``current_owner`` holds the owner found (kept out of the message, which may reach an HTTP client).
    """

    def __init__(self, session_id: str, owner: str | None, current_owner: str | None, *, expected: bool) -> None:
        if expected:
            msg = f"workbench session {session_id!r} is not owned by expected_owner; nothing was written"
        else:
            msg = (
                f"workbench session {session_id!r} belongs to another owner: pass expected_owner=<its current "
                "owner> to transfer it, or use a new session id"
            )
        super().__init__(msg)
        self.session_id = session_id
        self.owner = owner
        self.current_owner = current_owner


class _AnyOwner:
    def __repr__(self) -> str:
        return "ANY"


_ANY: Any = _AnyOwner()  # expected_owner not given (None means "expect no owner")


class Conflict(HotcacheError):
    """save(expected_version=N) found another version: someone saved in between. Load, merge, retry."""

    def __init__(self, session_id: str, expected: int, current: int) -> None:
        super().__init__(f"workbench session {session_id!r} is at version {current}, not {expected}")
        self.session_id = session_id
        self.expected = expected
        self.current = current


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    state: dict[str, Any]
    version: int
    owner: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class HistoryEntry(Session):
    """A session as it was persisted to MongoDB history."""

    closed_at: dt.datetime  # when it ended; for an abandoned session, its last update (last seen on the fallback)
    reason: str  # "ended" | "idle"


@dataclass(slots=True)
class PersistResult:
    ended: int = 0  # ended sessions written to history by this run
    idle: int = 0  # abandoned sessions written to history
    already: int = 0  # already in history (a replay or another worker): not written again
    kept: int = 0  # touched after the claim: written, but left hot
    missing: int = 0  # claimed but gone from Redis (expired before any persister ran)
    tampered: int = 0  # claimed but not trusted (failed verification, or not a member hotcache queued): dropped
    recovered: int = 0  # stale claims of an earlier run taken over
    from_fallback: int = 0  # sessions swept from workbench_active
    reconciled: int = 0  # outage copies compared with Redis after an outage (see "recovery")
    batches: int = 0  # MongoDB bulk writes
    dry_run: bool = False
    pending: dict[str, int] = field(default_factory=dict)  # dry run: what would be moved
    errors: list[str] = field(default_factory=list)

    @property
    def persisted(self) -> int:
        return self.ended + self.idle + self.from_fallback

    def as_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.__slots__}
        out["persisted"] = self.persisted
        return out


# --- keys and validation -------------------------------------------------------------------------


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


# --- the recovery fence ----------------------------------------------------------------------------
# A process that wrote to workbench_active because Redis was unreachable raises the fence in Redis with
# its next successful workbench call. While the fence is up, every session is compared with its MongoDB
# copy once (marked with the fence value) before Redis serves or changes it.

_fence_lock = threading.Lock()
_fence_pending: str | None = None
_durable_failed_logged = False


def _raise_fence_later() -> None:
    global _fence_pending
    with _fence_lock:
        # Sealed, so a process tells a fence hotcache raised from one written by someone else.
        _fence_pending = signing.seal(_FENCE_RECORD, _fence_key(), secrets.token_hex(8))


def _fence_args() -> tuple[str, int]:
    return _fence_pending or "", int(hotcache_settings.WORKBENCH_IDLE_TIMEOUT)


def _fence_sent(value: str) -> None:
    global _fence_pending
    if value:
        with _fence_lock:
            if _fence_pending == value:
                _fence_pending = None


def _current_fence() -> str:
    """The recovery fence if it is up and hotcache raised it, else ''. Any other value is lowered (tampered)."""
    key = _fence_key()

    def read(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        pipe.get(key)
        return pipe.execute(raise_on_error=False)

    try:
        [raw] = redis_backend.call(FEATURE, read)
    except RedisUnavailable:
        return ""
    if raw is None:
        return ""
    if not isinstance(raw, Exception) and signing.unseal(_FENCE_RECORD, key, raw) is not None:
        return _text(raw)
    signing.tampered(FEATURE, key, "is not a fence hotcache raised")
    try:
        redis_backend.call(FEATURE, lambda r: _UNFENCE(r, [key], [raw if isinstance(raw, bytes) else _FOREIGN]))
    except RedisUnavailable:
        pass
    return ""


# --- sealed envelopes ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Envelope:
    """A session's authenticated envelope in Redis (hash field ``m``): everything but the state, whose SHA-256
    it carries. Scripts compare ``raw`` as an opaque string; only Python opens it."""

    version: int
    token: str
    owner: str | None
    created: float
    updated: float
    digest: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class _Hot:
    """A session as Redis holds it, verified."""

    envelope: _Envelope
    text: str

    def session(self, session_id: str) -> Session:
        e = self.envelope
        return Session(
            session_id=session_id,
            state=json.loads(self.text),
            version=e.version,
            owner=e.owner,
            created_at=_ts(e.created),
            updated_at=_ts(e.updated),
        )


def _digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def _seal_envelope(
    session_id: str, *, version: int, token: str, owner: str | None, created: float, updated: float, digest: str
) -> _Envelope:
    body = {"v": version, "g": token, "o": owner, "c": created, "u": updated, "h": digest}
    raw = signing.seal_json(_SESSION_RECORD, _data_key(session_id), body).encode("utf-8")
    return _Envelope(version, token, owner, created, updated, digest, raw)


def _open_envelope(session_id: str, raw: Any) -> _Envelope | None:
    """The envelope ``raw`` if hotcache sealed it for this session's key, else None (never raises)."""
    if not raw or raw == _FOREIGN:
        return None
    value = signing.unseal_json(_SESSION_RECORD, _data_key(session_id), raw, required=_ENVELOPE_FIELDS)
    if value is None or not 1 <= value["v"] <= _MAX_VERSION:
        return None
    raw = raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
    return _Envelope(value["v"], value["g"], value["o"], float(value["c"]), float(value["u"]), value["h"], raw)


def _open_hot(session_id: str, state: Any, observed: Any) -> _Hot | None:
    """The session if its envelope is ours and its state is the one the envelope names, else None."""
    envelope = _open_envelope(session_id, observed)
    if envelope is None or not isinstance(state, bytes | str):
        return None
    data = state.encode("utf-8", "surrogatepass") if isinstance(state, str) else state
    if _digest(data) != envelope.digest:
        return None
    return _Hot(envelope, data.decode("utf-8"))  # the bytes hotcache wrote: UTF-8 by construction


def _envelope_from_doc(session_id: str, doc: Mapping[str, Any]) -> _Envelope:
    return _seal_envelope(
        session_id,
        version=int(doc["version"]),
        token=doc["token"],
        owner=doc.get("owner"),
        created=_ts(doc["created_at"]).timestamp(),
        updated=_ts(doc["updated_at"]).timestamp(),
        digest=_digest(doc["state"]),
    )


def _tampered(session_id: str, observed: Any, why: str | None = None) -> None:
    """Count a session record that failed verification (it is absent from now on) and forget its envelope."""
    _remember(session_id, None)
    if why is None:
        why = "is not a session record hotcache wrote" if observed in (_NONE, _FOREIGN) else "failed verification"
    signing.tampered(FEATURE, _data_key(session_id), why)


def _observed(reply: Any, exists: Any = 0) -> bytes:
    """An envelope as a script returned it, or as a pipeline read it (HGET m, and EXISTS for a miss): bytes,
    b'' for no session, b'!' for a key hotcache did not write (another type, or a hash without an envelope)."""
    if isinstance(reply, Exception):
        return _FOREIGN
    if reply is None or reply is False:
        return _FOREIGN if exists and not isinstance(exists, Exception) else _NONE
    return reply if isinstance(reply, bytes) else str(reply).encode("utf-8", "surrogatepass")


def _read_envelopes(session_ids: list[str]) -> list[bytes]:
    """The envelopes Redis holds for these sessions, as stored (one pipeline; ``_observed`` values)."""

    def run(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for session_id in session_ids:
            pipe.hget(_data_key(session_id), "m")
            pipe.exists(_data_key(session_id))
        return pipe.execute(raise_on_error=False)

    replies = redis_backend.call(FEATURE, run)
    return [_observed(m, exists) for m, exists in zip(replies[0::2], replies[1::2], strict=True)]


# The current envelope this process saw last, per session key: a save based on it is one round trip. A stale
# entry costs one more round trip (the script hands the current envelope back); it never decides a refusal.
_hints: OrderedDict[str, _Envelope] = OrderedDict()
_hints_lock = threading.Lock()


def _remember(session_id: str, envelope: _Envelope | None) -> None:
    key = _data_key(session_id)
    with _hints_lock:
        if envelope is None:
            _hints.pop(key, None)
            return
        _hints[key] = envelope
        _hints.move_to_end(key)
        while len(_hints) > _HINTS:
            _hints.popitem(last=False)


def _recall(session_id: str) -> _Envelope | None:
    with _hints_lock:
        return _hints.get(_data_key(session_id))


def _check_id(session_id: object) -> str:
    try:
        return keys.validate_name(session_id, what="workbench session id", pattern=_ID_PATTERN)
    except InvalidName as exc:
        raise InvalidInput("session_id", str(exc)) from None


def _check_owner(owner: object, field: str = "owner") -> str | None:
    if owner is None:
        return None
    if isinstance(owner, int) and not isinstance(owner, bool):
        if not -(10**127) < owner < 10**128:
            raise InvalidInput(field, f"workbench {field} is an integer of more than 128 digits")
        owner = str(owner)
    try:
        return keys.validate_name(owner, what=f"workbench {field}", pattern=_OWNER_PATTERN)
    except InvalidName as exc:
        raise InvalidInput(field, str(exc)) from None


def _check_expected_version(expected: object) -> int | None:
    if expected is None:
        return None
    if isinstance(expected, bool) or not isinstance(expected, int) or not 0 <= expected <= _MAX_VERSION:
        small = isinstance(expected, float | str) or (isinstance(expected, int) and abs(expected) < 10**40)
        shown = repr(expected)[:40] if small else type(expected).__name__  # (repr of a huge int raises)
        msg = f"expected_version must be a whole number from 0 to {_MAX_VERSION}, not {shown}"
        raise InvalidInput("expected_version", msg)
    return expected


def _too_deep(state: Mapping[str, Any], limit: int) -> int | None:
    """The first nesting depth over ``limit`` found in ``state`` (the state itself is depth 1), else None.

    Iterative, so a state nested far deeper than the interpreter's recursion limit (or a cyclic one) is
    refused with a ValueError instead of a RecursionError; at most ``limit`` levels are ever walked.
    """
    containers = (dict, list, tuple)  # what json encodes as objects and arrays (a tuple: the fastest isinstance)
    stack: list[tuple[Any, int]] = [(state.values(), 1)]
    while stack:
        children, depth = stack.pop()
        for child in children:
            if isinstance(child, containers):
                if depth >= limit:
                    return depth + 1
                stack.append((child.values() if isinstance(child, dict) else child, depth + 1))
    return None


def _encode_state(state: object) -> str:
    """The state as compact JSON; InvalidInput("state", reason) if it is not a JSON object hotcache keeps.

    Checked in this order, before any store is touched (the Redis path and the MongoDB fallback alike):
    a dict, nested at most WORKBENCH_MAX_DEPTH levels, JSON-serialisable, valid UTF-8 (no lone surrogate),
    at most WORKBENCH_MAX_STATE_BYTES bytes.
    """
    if not isinstance(state, Mapping):
        msg = f"workbench state must be a dict (a JSON object), not {type(state).__name__}"
        raise InvalidInput("state", msg)
    limit = int(hotcache_settings.WORKBENCH_MAX_DEPTH)
    depth = _too_deep(state, limit)
    if depth is not None:
        msg = (
            f"workbench state nests objects and arrays {depth} levels deep (at least); at most {limit} are "
            "allowed (HOTCACHE['WORKBENCH_MAX_DEPTH'])"
        )
        raise InvalidInput("state", msg)
    try:
        text = json.dumps(dict(state), separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        msg = f"workbench state is not JSON-serialisable: {str(exc)[:200]}"
        raise InvalidInput("state", msg) from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        msg = (
            f"workbench state holds a lone surrogate (U+{ord(text[exc.start]):04X}), which is not valid UTF-8: "
            "keys and strings must be proper Unicode text"
        )
        raise InvalidInput("state", msg) from None
    limit = int(hotcache_settings.WORKBENCH_MAX_STATE_BYTES)
    if size > limit:
        msg = (
            f"workbench state is {size} bytes as JSON, over the limit of {limit} "
            "(HOTCACHE['WORKBENCH_MAX_STATE_BYTES'])"
        )
        raise InvalidInput("state", msg)
    return text


def _ts(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, bytes):
        value = value.decode()
    return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- MongoDB collections -------------------------------------------------------------------------


def _history() -> mongo.Collection:
    def create(c: mongo.Collection) -> None:
        c.create_index([("owner", mongo.ASCENDING), ("closed_at", mongo.DESCENDING)], name="owner_closed")
        c.create_index([("closed_at", mongo.DESCENDING)], name="closed")

    return mongo.ensure_indexes(HISTORY, feature=FEATURE, create=create)


def _active() -> mongo.Collection:
    def create(c: mongo.Collection) -> None:
        c.create_index([("last_seen", mongo.ASCENDING)], name="last_seen")

    return mongo.ensure_indexes(ACTIVE, feature=FEATURE, create=create)


# --- the service ---------------------------------------------------------------------------------


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
        version = _mongo_save(
            session_id, text, owner, expected_version, expected_owner, token, in_redis=exc.maybe_applied
        )
    metering.event(FEATURE, "saved")
    return version


def _owner_refused(current: str | None, owner: str | None, expected_owner: Any) -> bool:
    """The owner rule: a save may not change the owner unless it names the current one in expected_owner."""
    if expected_owner is not _ANY:
        return expected_owner != current
    return owner is not None and owner != current


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
            self.session_id, version=1, token=self.token, owner=self.owner, created=self.now, updated=self.now,
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
    ttl = int(hotcache_settings.WORKBENCH_IDLE_TIMEOUT)
    keys_ = [_data_key(session_id), _index_key(), _fence_key()]
    seen, fresh = _recall(session_id), False
    checked = migrated = False
    for _ in range(_SAVE_ATTEMPTS):
        base, following, create = request.plan(seen, fresh)
        fence, fence_ttl = _fence_args()
        args = [text, base, following.raw if following else _NONE, repr(now), ttl, session_id, fence, fence_ttl]
        args.append(create.raw if create else _NONE)
        out = redis_backend.call(FEATURE, lambda r, a=args: _SAVE(r, keys_, a))
        _fence_sent(fence)
        status = int(out[0])
        written = following if status == 1 else create if status == 2 else None
        if written is not None:
            _remember(session_id, written)
            if hotcache_settings.WORKBENCH_DURABLE_SAVES:
                _durable_write(session_id, written, text, created=status == 2)
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


def _durable_write(session_id: str, envelope: _Envelope, text: str, *, created: bool = False) -> None:
    """Copy a Redis save to workbench_active: ONE conditional upsert that never replaces a newer version.

    The filter matches the session's document only if it holds an older version (or a durable copy of
    another incarnation, which has left Redis: ended or persisted, or lost; a save that ``created`` the
    session gets such a copy back and keeps it in history). Otherwise the upsert tries to insert on the
    existing _id and gets E11000: a newer version (or an outage copy) is already there, nothing to do.
    """
    global _durable_failed_logged
    updated = _ts(envelope.updated)
    doc = {
        "state": text,
        "version": envelope.version,
        "token": envelope.token,
        "owner": envelope.owner,
        "created_at": _ts(envelope.created),
        "updated_at": updated,
        "last_seen": updated,
        "origin": _REDIS,
        "from_redis": True,
    }
    version, token = envelope.version, envelope.token
    flt = {"_id": session_id, "$or": [{"version": {"$lt": version}}, {"token": {"$ne": token}, "origin": _REDIS}]}
    try:
        if created:
            # A new incarnation may replace another one's copy: get it back (same single operation).
            before = _active().find_one_and_update(flt, {"$set": doc}, upsert=True, return_new=False)
        else:
            before = None
            _active().update_one(flt, {"$set": doc}, upsert=True)
    except DuplicateKey:
        return  # a newer version is already there
    except BackendUnavailable:
        metering.event(FEATURE, "durable_save_failed")
        if not _durable_failed_logged:
            _durable_failed_logged = True
            log.warning(
                "hotcache.workbench: MongoDB unavailable for durable saves; sessions stay in Redis only "
                "(not visible during a Redis outage) until it is back"
            )
        return
    _durable_failed_logged = False
    if before is not None and before.get("token") != token:
        _keep_replaced(session_id, before)


def _keep_replaced(session_id: str, doc: Mapping[str, Any]) -> None:
    """A new incarnation replaced another one's durable copy, which means that one left Redis. Ended or
    persisted, its history record is there or on its way (this write is then a no-op or replaced: history is
    rank-guarded); lost from Redis (deleted, evicted, a restart without persistence), this copy is its last
    trace: it goes to history as abandoned. Only on this path: one bulk write (two if already there)."""
    record = _history_record(
        session_id=session_id,
        token=doc["token"],
        text=doc["state"],
        version=int(doc["version"]),
        owner=doc.get("owner"),
        created=_ts(doc["created_at"]),
        updated=_ts(doc["updated_at"]),
        closed=_ts(doc.get("last_seen") or doc["updated_at"]),
        reason="idle",
    )
    try:
        _write_history([record])
    except BackendUnavailable:
        log.warning("hotcache.workbench: the replaced copy of %s:%s stays out of history", session_id, doc["token"])


def load(session_id: str) -> Session | None:
    """The session, or None if there is none (never saved, ended, or persisted as abandoned). Renews its lifetime.

    A Redis copy that fails verification is absent: its durable copy is served (and put back), else None.
    """
    session_id = _check_id(session_id)
    now = clock.time()
    ttl = int(hotcache_settings.WORKBENCH_IDLE_TIMEOUT)
    keys_ = [_data_key(session_id), _index_key(), _fence_key()]
    fence, fence_ttl = _fence_args()
    try:
        row = redis_backend.call(FEATURE, lambda r: _LOAD(r, keys_, [repr(now), ttl, session_id, fence, fence_ttl]))
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        session = _mongo_load(session_id)
    else:
        _fence_sent(fence)
        hot = _hot_from_row(session_id, row)
        session = hot.session(session_id) if hot is not None else None
    if session is not None:
        metering.event(FEATURE, "loaded")
    return session


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
    keys_ = [_data_key(session_id), _index_key(), _ended_queue(), ended_key, _fence_key()]
    record = signing.seal_json(_ENDED_RECORD, ended_key, {"e": now})
    args = [repr(now), int(hotcache_settings.WORKBENCH_ENDED_TTL), f"{session_id}:{token}", session_id]
    _remember(session_id, None)
    try:
        ended: bool | None = None
        for attempt in range(3):
            fence, fence_ttl = _fence_args()
            out = redis_backend.call(FEATURE, lambda r, f=fence, t=fence_ttl: _END(r, keys_, [*args, f, t, record]))
            _fence_sent(fence)
            status = int(out[0])
            observed = _observed(out[1]) if len(out) > 1 else _NONE
            current = _open_envelope(session_id, observed)
            if status == 1 and _open_hot(session_id, out[2], observed) is not None:
                assert current is not None
                _drop_durable_copy(session_id, current.token, current.version)
                ended = True
            elif status == 1:
                # Redis ended a record hotcache did not write: the persister will drop it, so the session
                # reaches history from its durable copy instead (False without one: there was no session).
                why = "holds a state its envelope does not name" if current is not None else None
                _tampered(session_id, observed, why)
                ended = _mongo_end(session_id, redis_gone=True)
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
        # Reply lost (maybe_applied): Redis may or may not have ended it. _mongo_end writes history from the
        # MongoDB copy (same incarnation token, so Redis's ended record, if any, lands on the same _id) and
        # leaves a tombstone that drops Redis's copy if the end did not run there. Without a MongoDB copy the
        # outcome is unknown: answer True; the session reaches history once either way (as ended, or as idle).
        ended = _mongo_end(session_id) or exc.maybe_applied
    if ended:
        metering.event(FEATURE, "ended")
    return ended


def history(owner: str | int | None = None, limit: int = 50) -> list[HistoryEntry]:
    """Sessions in MongoDB history (ended or abandoned), newest first; only ``owner``'s if given."""
    owner = _check_owner(owner)
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidInput("limit", f"limit must be a whole number, not {type(limit).__name__}")
    limit = max(1, min(limit, 1000))
    docs = _history().find(
        {"owner": owner} if owner is not None else {},
        sort=[("closed_at", mongo.DESCENDING), ("_id", mongo.ASCENDING)],
        limit=limit,
    )
    return [
        HistoryEntry(
            session_id=d["session_id"],
            state=json.loads(d["state"]),
            version=int(d["version"]),
            owner=d.get("owner"),
            created_at=_ts(d["created_at"]),
            updated_at=_ts(d["updated_at"]),
            closed_at=_ts(d["closed_at"]),
            reason=d["reason"],
        )
        for d in docs
    ]


@dataclass(frozen=True, slots=True)
class SessionCounts:
    active: int  # sessions in the Redis index (hot, or idle and waiting for the persister)
    idle: int  # of those, unused longer than WORKBENCH_PERSIST_IDLE_AFTER
    ended: int  # ended sessions queued for history
    claimed: int  # taken by a persister run that has not acknowledged yet


def counts() -> SessionCounts:
    """How many sessions are where, from the Redis indexes: one round trip of 4 O(1)/O(log n) commands.

    Raises RedisUnavailable (the figures live only in Redis).
    """
    stale = clock.time() - float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER)

    def read(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        pipe.zcard(_index_key())
        pipe.zcount(_index_key(), "-inf", stale)
        pipe.zcard(_ended_queue())
        pipe.zcard(_claims_key())
        return pipe.execute()

    active, idle, ended, claimed = (int(n) for n in redis_backend.call(FEATURE, read))
    return SessionCounts(active=active, idle=idle, ended=ended, claimed=claimed)


def _token() -> str:
    return secrets.token_hex(6)


# --- the MongoDB fallback (workbench_active) -------------------------------------------------------


def _mongo_doc_session(doc: Mapping[str, Any]) -> Session:
    return Session(
        session_id=doc["_id"],
        state=json.loads(doc["state"]),
        version=int(doc["version"]),
        owner=doc.get("owner"),
        created_at=_ts(doc["created_at"]),
        updated_at=_ts(doc["updated_at"]),
    )


_LIVE = {"ended": {"$ne": True}}  # tombstones (ended on MongoDB during an outage) are not sessions


def _fresh_doc(
    session_id: str,
    text: str,
    owner: str | None,
    now: dt.datetime,
    tomb: Mapping[str, Any] | None,
    token: str,
    in_redis: bool,
) -> dict:
    doc: dict[str, Any] = {
        "_id": session_id,
        "version": 1,
        "token": token,
        "owner": owner,
        "created_at": now,
        "state": text,
        "updated_at": now,
        "last_seen": now,
        "origin": _FALLBACK,
    }
    if tomb is not None:
        # Keep what the tombstone says: Redis may still hold the ended incarnation (dropped on reconcile).
        doc["gone_token"], doc["gone_version"] = tomb["token"], int(tomb["version"])
    if in_redis:
        # Redis may have run this very creation (its reply was lost): it may hold this incarnation (same
        # token), so an end() on MongoDB leaves a tombstone that drops Redis's copy when it returns.
        doc["from_redis"] = True
    return doc


def _replace_tombstone(
    coll: mongo.Collection, session_id: str, text: str, owner: str | None, token: str, in_redis: bool
) -> int | None:
    """Start a new incarnation over a tombstone; 1 on success, None if the document is not a tombstone."""
    tomb = coll.find_one({"_id": session_id})
    if tomb is None or not tomb.get("ended"):
        return None
    doc = _fresh_doc(session_id, text, owner, clock.utcnow(), tomb, token, in_redis)
    fields = {k: v for k, v in doc.items() if k != "_id"}
    update = {"$set": fields, "$unset": {"ended": ""} if in_redis else {"ended": "", "from_redis": ""}}
    matched = coll.update_one({"_id": session_id, "ended": True, "token": tomb["token"]}, update)
    return 1 if matched else None


def _mongo_save(
    session_id: str,
    text: str,
    owner: str | None,
    expected: int | None,
    expected_owner: Any,
    token: str,
    *,
    in_redis: bool = False,
) -> int:
    """The save on workbench_active (Redis unreachable), with the same versions, Conflicts and owner rule.

    ``token``: the incarnation token a creation uses, the one the Redis attempt sent; ``in_redis``: that
    attempt may have been applied (its reply was lost). The owner rule is part of each update's filter, so
    the check and the write are one atomic operation, as the compare-and-set is on Redis.
    """
    coll = _active()
    now = clock.utcnow()
    # Written while Redis is unreachable: Redis may hold an older copy when it returns (see "recovery").
    fields: dict[str, Any] = {"state": text, "updated_at": now, "last_seen": now, "origin": _FALLBACK}
    if expected == 0:
        try:
            coll.insert_one(_fresh_doc(session_id, text, owner, now, None, token, in_redis))
        except DuplicateKey:
            if _replace_tombstone(coll, session_id, text, owner, token, in_redis):
                _raise_fence_later()
                return 1
            current = coll.find_one({"_id": session_id, **_LIVE}, {"version": 1})
            metering.event(FEATURE, "conflict")
            raise Conflict(session_id, 0, int(current["version"]) if current else 0) from None
        _raise_fence_later()
        return 1
    if owner is not None:
        fields["owner"] = owner
    update: dict[str, Any] = {"$set": fields, "$inc": {"version": 1}}
    if expected_owner is not _ANY:
        owners: dict[str, Any] = {"owner": expected_owner}  # None matches a document without an owner
    else:
        owners = {"owner": owner} if owner is not None else {}
    if expected is not None:
        doc = coll.find_one_and_update({"_id": session_id, "version": expected, **owners, **_LIVE}, update)
        if doc is None:
            current = coll.find_one({"_id": session_id, **_LIVE}, {"version": 1, "owner": 1})
            if current is not None and int(current["version"]) == expected:
                if _owner_refused(current.get("owner"), owner, expected_owner):
                    raise OwnerConflict(
                        session_id, owner, current.get("owner"), expected=expected_owner is not _ANY
                    )
            metering.event(FEATURE, "conflict")
            raise Conflict(session_id, expected, int(current["version"]) if current else 0)
        _raise_fence_later()
        return int(doc["version"])
    for _ in range(3):
        doc = coll.find_one_and_update({"_id": session_id, **owners, **_LIVE}, update)
        if doc is not None:
            _raise_fence_later()
            return int(doc["version"])
        try:
            coll.insert_one(_fresh_doc(session_id, text, owner, now, None, token, in_redis))
        except DuplicateKey:
            # The id holds a tombstone (start a new incarnation over it), a session of another owner, or a
            # session created since the update above (the next attempt updates it).
            if _replace_tombstone(coll, session_id, text, owner, token, in_redis):
                _raise_fence_later()
                return 1
            current = coll.find_one({"_id": session_id, **_LIVE}, {"owner": 1})
            if current is not None and _owner_refused(current.get("owner"), owner, expected_owner):
                raise OwnerConflict(
                    session_id, owner, current.get("owner"), expected=expected_owner is not _ANY
                ) from None
            continue
        _raise_fence_later()
        return 1
    msg = f"workbench session {session_id!r}: concurrent creation did not settle"
    raise MongoUnavailable(msg)


def _mongo_load(session_id: str) -> Session | None:
    doc = _active().find_one_and_update({"_id": session_id, **_LIVE}, {"$set": {"last_seen": clock.utcnow()}})
    return _mongo_doc_session(doc) if doc else None


def _mongo_end(session_id: str, *, redis_gone: bool = False) -> bool:
    """End the session from its workbench_active copy: history now, then the copy leaves. ``redis_gone``: Redis
    holds no incarnation of it any more (so no tombstone is needed to drop one when Redis returns)."""
    coll = _active()
    doc = coll.find_one({"_id": session_id, **_LIVE})
    if doc is None:
        return False
    now = clock.utcnow()
    record = _history_record(
        session_id=session_id,
        token=doc["token"],
        text=doc["state"],
        version=int(doc["version"]),
        owner=doc.get("owner"),
        created=_ts(doc["created_at"]),
        updated=_ts(doc["updated_at"]),
        closed=now,
        reason="ended",
    )
    _write_history([record])
    # Only the version written to history leaves; a save in between keeps the session active.
    current = {"_id": session_id, "version": doc["version"], "token": doc["token"]}
    if not redis_gone and (doc.get("from_redis") or doc.get("gone_token")):
        # Redis may still hold this incarnation (a durable copy), or an older one: leave a tombstone so
        # that the recovery drops it there instead of bringing an ended session back.
        tomb = {"ended": True, "origin": _FALLBACK, "state": "{}", "last_seen": now}
        if coll.update_one(current, {"$set": tomb, "$unset": {"gone_token": "", "gone_version": ""}}):
            _raise_fence_later()
    else:
        coll.delete_one(current)
    return True


def _drop_durable_copy(session_id: str, token: str, version: int) -> None:
    """After end() in Redis: remove the durable copy (one MongoDB op per end; the persister is the backstop)."""
    if not hotcache_settings.WORKBENCH_DURABLE_SAVES:
        return
    try:
        _active().delete_one({"_id": session_id, "token": token, "version": {"$lte": version}, "origin": _REDIS})
    except BackendUnavailable:
        log.warning("hotcache.workbench: ended %s; its durable copy stays until the persister removes it", session_id)


def _migrate(session_id: str) -> _Hot | None:
    """A Redis miss: bring a session kept on MongoDB (outage or durable copy) back into Redis; None if none."""
    return _reconcile(session_id, _NONE)


def _reconcile_args(
    action: str, fence: str, observed: bytes, doc: Mapping[str, Any], session_id: str
) -> list[Any]:
    envelope, state = _NONE, ""
    if action == "put":
        envelope, state = _envelope_from_doc(session_id, doc).raw, doc["state"]
    ttl = int(hotcache_settings.WORKBENCH_IDLE_TIMEOUT)
    return [action, fence, observed, envelope, state, repr(clock.time()), ttl, session_id]


def _plan(
    doc: Mapping[str, Any] | None, current: _Envelope | None, observed: bytes, tampered: bool
) -> list[tuple[str, bytes, Mapping[str, Any]]]:
    """The recovery rule: which actions (each applied only if Redis still holds ``observed``) bring Redis's copy
    (``current``, verified; or none; or a ``tampered`` one) in line with the MongoDB document.

    - a tampered copy is absent: MongoDB's document replaces it, or it is dropped;
    - a tombstone of the incarnation Redis holds (same token, version at least Redis's): drop it in Redis;
    - a document that remembers an ended incarnation (gone_token) Redis still holds: drop that first;
    - an outage ("fallback") or durable document of the same incarnation with a NEWER version, or any
      document when Redis has none: put it into Redis;
    - otherwise Redis is current (it is never overwritten by an older version or another incarnation).
    """
    if doc is None:
        return [("drop", observed, {})] if tampered else [("mark", observed, {})]
    if doc.get("ended"):
        holds = current is not None and current.token == doc["token"] and current.version <= int(doc["version"])
        return [("drop" if tampered or holds else "mark", observed, doc)]
    actions: list[tuple[str, bytes, Mapping[str, Any]]] = []
    gone = doc.get("gone_token")
    if current is not None and gone and current.token == gone and current.version <= int(doc.get("gone_version", 0)):
        actions.append(("drop", observed, doc))
        current, observed = None, _NONE
    if tampered or current is None or (current.token == doc["token"] and int(doc["version"]) > current.version):
        actions.append(("put", observed, doc))
    else:
        actions.append(("mark", observed, doc))
    return actions


def _reconcile(
    session_id: str,
    observed: bytes,
    current: _Envelope | None = None,
    *,
    tampered: bool = False,
    hot: _Hot | None = None,
) -> _Hot | None:
    """Compare one session's Redis copy with workbench_active and fix Redis; the session as Redis now holds it.

    ``observed``: the envelope Redis held when looked at (b'' none); ``current``: it, verified; ``tampered``:
    it failed verification (absent: MongoDB's copy replaces it, or it is deleted); ``hot``: the verified
    session, returned as is when nothing changes. One MongoDB read and one Redis round trip per action, plus
    one to read the result.
    """
    try:
        doc = _active().find_one({"_id": session_id})
    except BackendUnavailable:
        log.warning("hotcache.workbench: MongoDB unavailable while checking %s for an outage copy", session_id)
        return hot
    if doc is None and current is None and not tampered:
        return None
    fence = _current_fence()
    keys_ = [_data_key(session_id), _index_key()]
    changed = False
    for action, seen, src in _plan(doc, current, observed, tampered):
        args = _reconcile_args(action, fence, seen, src, session_id)
        try:
            changed = bool(redis_backend.call(FEATURE, lambda r, a=args: _RECONCILE(r, keys_, a))) or changed
        except RedisUnavailable:
            if doc is None or doc.get("ended"):
                return hot
            return _Hot(_envelope_from_doc(session_id, doc), doc["state"])
    if doc is not None:
        _settle(doc, keys_)
    if not changed and hot is not None:
        _remember(session_id, hot.envelope)
        return hot
    now = clock.time()
    load_args = [repr(now), int(hotcache_settings.WORKBENCH_IDLE_TIMEOUT), session_id, "", 1]
    row = redis_backend.call(FEATURE, lambda r: _LOAD(r, [*keys_, _fence_key()], load_args))
    result = _open_hot(session_id, row[0], _observed(row[1])) if row else None
    if row and result is None:
        _tampered(session_id, _observed(row[1]))  # written again since: absent, left for the next look
    _remember(session_id, result.envelope if result is not None else None)
    return result


def _redis_envelope(session_id: str) -> _Envelope | None:
    """The session's envelope in Redis, verified (None: none, or not trusted). One round trip."""
    [observed] = _read_envelopes([session_id])
    return _open_envelope(session_id, observed)


def _settle(doc: Mapping[str, Any], keys_: list[str]) -> None:
    """After Redis took (or refused) the MongoDB copy: it is no longer an outage copy."""
    flt = {"_id": doc["_id"], "version": doc["version"], "token": doc["token"], "origin": doc.get("origin")}
    try:
        if doc.get("ended"):
            _active().delete_one(flt)
        elif doc.get("origin") == _FALLBACK:
            held = _redis_envelope(doc["_id"])
            same = held is not None and held.token == doc["token"] and held.version >= int(doc["version"])
            if same and not hotcache_settings.WORKBENCH_DURABLE_SAVES:
                _active().delete_one(flt)  # Redis has it: without durable saves MongoDB keeps no copy
            else:
                origin = _REDIS if same else _FORK
                unset = {"gone_token": "", "gone_version": ""}
                _active().update_one(flt, {"$set": {"origin": origin, "from_redis": same}, "$unset": unset})
    except (BackendUnavailable, RedisUnavailable):
        log.warning("hotcache.workbench: could not settle the outage copy of %s; the persister will", doc["_id"])


# --- persisting --------------------------------------------------------------------------------------


def _history_record(
    *,
    session_id: str,
    token: str,
    text: str,
    version: int,
    owner: str | None,
    created: dt.datetime,
    updated: dt.datetime,
    closed: dt.datetime,
    reason: str,
) -> dict[str, Any]:
    return {
        "_id": f"{session_id}:{token}",
        "session_id": session_id,
        "token": token,
        "version": version,
        "rank": version * 2 + (1 if reason == "ended" else 0),
        "state": text,  # JSON text: any JSON object key is safe, and MongoDB field-name rules do not apply
        "owner": owner,
        "created_at": created,
        "updated_at": updated,
        "closed_at": closed,
        "reason": reason,
        "persisted_at": clock.utcnow(),
    }


def _write_history(records: list[dict[str, Any]]) -> set[int]:
    """Write history records in bulk; return the indexes of records that were already there.

    First one unordered bulk insert (the common case: new records, one round trip). Records whose _id
    exists (E11000: a replay, another worker, or a session persisted earlier at an older version) get a
    second bulk of rank-guarded upserts: a newer version replaces the stored one; a record that is not
    newer matches nothing, upserts on the existing _id and fails with E11000 again: already persisted.
    """
    if not records:
        return set()
    coll = _history()
    first = coll.bulk([mongo.Insert(rec) for rec in records], ordered=False)
    if not first.duplicates:
        return set()
    again = [records[i] for i in first.duplicates]
    ops = [mongo.Update({"_id": rec["_id"], "rank": {"$lt": rec["rank"]}}, {"$set": rec}, upsert=True) for rec in again]
    second = coll.bulk(ops, ordered=False)
    return {first.duplicates[i] for i in second.duplicates}


def _claim(run_id: str, limit: int) -> list[bytes]:
    now = clock.time()
    ttl = int(hotcache_settings.WORKBENCH_ENDED_TTL) * _QUEUE_TTL_FACTOR
    idle_cutoff = now - float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER)
    stale_cutoff = now - float(hotcache_settings.WORKBENCH_CLAIM_TIMEOUT)
    keys_ = [_index_key(), _ended_queue(), _claims_key(), _owners_key()]
    args = [repr(now), repr(idle_cutoff), repr(stale_cutoff), run_id, limit, ttl]
    return list(redis_backend.call(FEATURE, lambda r: _CLAIM(r, keys_, args)))


@dataclass(slots=True)
class _Claimed:
    member: bytes  # as queued (handed back to the scripts byte for byte)
    kind: str  # "e" ended | "i" idle | "x" not a member hotcache queues (dropped from the claims only)
    session_id: str
    key: str
    hot: _Hot | None = None  # the session read, verified
    closed: float = 0.0  # ended: when (from the sealed end record)
    observed: bytes = _NONE  # the envelope read: an idle session is deleted only if it still holds it
    tampered: bool = False


def _parse_member(member: bytes | str) -> _Claimed:
    raw = member if isinstance(member, bytes) else member.encode("utf-8", "surrogatepass")
    match = _MEMBER.fullmatch(raw.decode("utf-8", "replace"))
    if match is None:
        return _Claimed(raw, "x", "", _index_key(), tampered=True)
    if match["ended"]:
        return _Claimed(raw, "e", match["ended"], _ended_key(match["ended"], match["token"]))
    return _Claimed(raw, "i", match["idle"], _data_key(match["idle"]))


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
        return pipe.execute(raise_on_error=False)

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
    keys_ = [_index_key(), _claims_key(), _owners_key()]
    args: list[Any] = [run_id]
    for c in claimed:
        keys_.append(c.key)
        args += [c.member, c.kind, c.session_id, c.observed]
    acked, kept, done = redis_backend.call(FEATURE, lambda r: _ACK(r, keys_, args))
    return int(acked), int(kept), [int(i) - 1 for i in done]


def _drop_durable_copies(claimed: list[_Claimed], positions: list[int]) -> None:
    """Remove the durable copies of sessions that left Redis for history (one MongoDB op per batch).

    Only a durable copy ("redis" origin) of that incarnation at that version or older: an outage copy
    that is newer stays for the recovery. If this fails, the idle sweep removes them later (history is
    keyed, so nothing is written twice).
    """
    if not hotcache_settings.WORKBENCH_DURABLE_SAVES:
        return
    # Ended sessions: end() removed their copy already (one op per end); only idle ones are left here.
    gone = [(claimed[i].session_id, claimed[i].hot) for i in positions if claimed[i].kind == "i"]
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


def _release(run_id: str, members: list[bytes]) -> None:
    try:
        redis_backend.call(FEATURE, lambda r: _RELEASE(r, [_claims_key(), _owners_key()], [run_id, *members]))
    except RedisUnavailable:
        pass  # the claims go stale after WORKBENCH_CLAIM_TIMEOUT instead


def _persist_batch(run_id: str, result: PersistResult, limit: int) -> int:
    """Claim, write and ack one batch; returns how many members were claimed (0 = nothing left)."""
    members = _claim(run_id, limit)
    if not members:
        return 0
    try:
        claimed = [_parse_member(m) for m in members]
        _read(claimed)
        present = [c for c in claimed if c.hot is not None]
        records = [_record_for(c) for c in present]
        duplicates = _write_history(records)
        result.batches += 1
        _acked, kept, done = _ack(run_id, claimed)
    except BaseException:
        _release(run_id, members)
        raise
    _drop_durable_copies(claimed, done)
    for c in claimed:
        if c.kind == "x":
            signing.tampered(FEATURE, _claims_key(), "held a member hotcache did not queue")
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
    return len(members)


def _sweep_active(result: PersistResult, limit: int, max_batches: int) -> None:
    """Move sessions idle in workbench_active (saved there during a Redis outage) into history."""
    coll = _active()
    cutoff = clock.utcnow() - dt.timedelta(seconds=float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER))
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
        records = [
            _history_record(
                session_id=d["_id"],
                token=d["token"],
                text=d["state"],
                version=int(d["version"]),
                owner=d.get("owner"),
                created=_ts(d["created_at"]),
                updated=_ts(d["updated_at"]),
                closed=_ts(d["last_seen"]),
                reason="idle",
            )
            for d in docs
        ]
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


def _live_in_redis(docs: list[dict]) -> set[str]:
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


def _reconcile_active(result: PersistResult, limit: int, max_batches: int) -> None:
    """Recovery after a Redis outage: bring every outage copy (and tombstone) in workbench_active in line with
    Redis, then lower the fence if nobody raised it again meanwhile. Per batch: one MongoDB read, one Redis
    pipeline, and the settle writes."""
    coll = _active()
    fence = _current_fence()
    for _ in range(max_batches):
        docs = coll.find({"origin": _FALLBACK}, sort=[("last_seen", mongo.ASCENDING)], limit=limit)
        if not docs:
            break

        plans = []
        for d, observed in zip(docs, _read_envelopes([d["_id"] for d in docs]), strict=True):
            current = _open_envelope(d["_id"], observed)
            tampered = bool(observed) and current is None
            if tampered:
                _tampered(d["_id"], observed)
            plans.append((d, _plan(d, current, observed, tampered)))

        def apply(r: Any, batch: list = plans) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for d, actions in batch:
                for action, seen, src in actions:
                    # EVAL (not EVALSHA) in a pipeline: no NOSCRIPT round trip to handle; a rare recovery path.
                    ks = [_data_key(d["_id"]), _index_key()]
                    pipe.eval(_RECONCILE.body, len(ks), *ks, *_reconcile_args(action, fence, seen, src, d["_id"]))
            return pipe.execute()

        redis_backend.call(FEATURE, apply)
        for d, _actions in plans:
            _remember(d["_id"], None)
            _settle(d, [_data_key(d["_id"]), _index_key()])
        result.reconciled += len(docs)
        if len(docs) < limit:
            break
    else:
        return  # more left: keep the fence up for the next run
    if fence:
        redis_backend.call(FEATURE, lambda r: _UNFENCE(r, [_fence_key()], [fence]))


def persist(*, dry_run: bool = False, limit: int | None = None) -> PersistResult:
    """Move ended sessions, and sessions idle past WORKBENCH_PERSIST_IDLE_AFTER, into MongoDB history.

    Safe to run concurrently and to rerun after a crash (claim -> bulk write -> ack; history is keyed).
    ``limit`` caps the sessions handled in this run (default: all that are due). ``dry_run`` only counts.
    """
    result = PersistResult(dry_run=dry_run)
    if dry_run:
        result.pending = _pending()
        return result
    batch = int(hotcache_settings.WORKBENCH_PERSIST_BATCH)
    remaining = limit if limit is not None else None
    run_id = uuid.uuid4().hex
    before_claims = _stale_claims()
    try:
        # Outage copies first: an idle Redis session must not be persisted over a newer outage version.
        _reconcile_active(result, batch, max_batches=max(1, (limit or 10**9) // batch + 1))
        while remaining is None or remaining > 0:
            size = batch if remaining is None else min(batch, remaining)
            n = _persist_batch(run_id, result, size)
            if n == 0:
                break
            if remaining is not None:
                remaining -= n
    except RedisUnavailable as exc:
        result.errors.append(f"redis: {exc}")
        # Down, or a shared key retyped by someone else: the next run works again once it is deleted.
        result.tampered += _repair_shared_keys()
    except BackendUnavailable as exc:
        result.errors.append(f"mongodb: {exc} (claimed sessions stay queued for the next run)")
    result.recovered = before_claims
    if not any(e.startswith("mongodb") for e in result.errors):
        try:
            _sweep_active(result, batch, max_batches=max(1, (limit or 10**9) // batch + 1))
        except BackendUnavailable as exc:
            result.errors.append(f"mongodb: {exc}")
    if result.persisted:
        metering.event(FEATURE, "persisted", result.persisted)
    for message in result.errors:
        log.warning("hotcache.workbench: persist incomplete: %s", message)
    return result


def _stale_claims() -> int:
    cutoff = clock.time() - float(hotcache_settings.WORKBENCH_CLAIM_TIMEOUT)
    try:
        return int(redis_backend.call(FEATURE, lambda r: r.zcount(_claims_key(), "-inf", repr(cutoff))))
    except RedisUnavailable:
        return 0


def _repair_shared_keys() -> int:
    """Delete the keys every session shares if they hold another Redis type than hotcache writes there
    (tampered): each script touching one fails, sending every session to the fallback and failing every
    persister run. Run after a run failed on Redis; returns how many keys were deleted (each counted)."""
    expected = {
        _index_key(): b"zset", _ended_queue(): b"zset", _claims_key(): b"zset", _owners_key(): b"hash",
        _fence_key(): b"string",
    }

    def types(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for key in expected:
            pipe.type(key)
        return pipe.execute()

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
        pipe.zcard(_ended_queue())
        pipe.zcount(_index_key(), "-inf", repr(idle_cutoff))
        pipe.zcount(_claims_key(), "-inf", repr(stale_cutoff))
        return pipe.execute()

    try:
        ended, idle, stale = redis_backend.call(FEATURE, run)
        out.update(ended=int(ended), idle=int(idle), stale_claims=int(stale))
    except RedisUnavailable:
        out["redis_unavailable"] = 1
    try:
        cutoff = clock.utcnow() - dt.timedelta(seconds=float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER))
        out["fallback_idle"] = _active().count({"last_seen": {"$lt": cutoff}})
    except BackendUnavailable:
        out["mongodb_unavailable"] = 1
    return out
