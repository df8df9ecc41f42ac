"""MFA one-time codes: issue() and verify(). Hashed at rest, single use under any concurrency, bounded guessing.

At rest there is only ``HMAC-SHA256(k, purpose NUL user NUL code)`` with ``k`` derived from Django's
SECRET_KEY (salted_hmac, salt "hotcache.mfa"), so nothing in Redis or MongoDB gives back a live code.
Digests are compared in constant time (a no-early-exit loop in Lua, hmac.compare_digest in Python).

Redis (the hot path, one round trip each):
  ``{mfa:<user>}:<purpose>:code``  hash d/a/iat/st/s, PEXPIRE = MFA_CODE_TTL
  ``{mfa:<user>}:<purpose>:cool``  resend cooldown marker;  ``...:sends`` sends this hour;
  ``{mfa:<user>}:<purpose>:fails`` wrong guesses in the user's failure window.
  mfa_issue.lua checks cooldown and cap and replaces the record; mfa_verify.lua checks the user's
  failure cap, compares, then either consumes (st=used) or HINCRBYs the attempts and burns the code
  at MFA_MAX_ATTEMPTS. A consumed or burned record stays as a tombstone until the code's own expiry,
  which the cross-store rules below rely on.

Tampering (issue 13). ``s`` signs the record's digest and issue time for its user and purpose
(hotcache.signing): Lua cannot check it, so Python checks what the verify script used, and a forged,
swapped or expired-but-kept record is absent: counted as ``mfa:tampered``, deleted, and the failure
it cost given back (mfa_drop.lua, only then: one more round trip). The outage marker is a signed
record too. The counters (attempts, failures, sends) and the cooldown are not signed: absence is a
valid state, so a Redis writer could reset them by deleting them whatever we signed; the scripts
only make sure no value found there can fail a script or stretch a window past its setting.

MongoDB (the fallback, collection ``mfa_codes``, one document per user and purpose holding the same
state): find_one_and_update with ``st: live, expires_at > now, a < max`` counts the attempt and
returns the digest, compare_digest decides, and a second find_one_and_update conditioned on the
same digest and issue time consumes it; only one caller can win that. A TTL index on ``purge_at``
only collects garbage: every read filters on ``expires_at``.

Across the two stores. A code lives in exactly one store: the one that was reachable when it was
issued. Each store consumes its own codes atomically, so **a code succeeds at most once**, whatever
the interleaving with outages. verify() asks Redis first; Redis's answer is final when it is ``ok``
or the user's failure cap, and also (no MongoDB operation at all) when no outage happened within a
code's lifetime: see the outage marker below. Otherwise (no record, a wrong guess, a tombstone) it
asks MongoDB for a live code issued *after* the Redis record (issue times are app-clock
milliseconds in both stores), so a code issued on MongoDB during an outage verifies after Redis
returns, a code that was issued on Redis before an outage verifies once Redis is back, and an older
MongoDB code superseded by a newer Redis one (or by a tombstone of one) is refused. When a newer
MongoDB code succeeds, the older Redis record is deleted. Limit: while Redis is down, MongoDB cannot
see or delete a code held in Redis, so such a code reports ``expired_or_missing`` (the user can ask
for a new code, which is issued on MongoDB); if the user later submits the older Redis code first,
it is accepted once and the newer MongoDB code then remains usable once: two codes the user
received, each single use. Resend cooldown, hourly cap and failure counts are kept per store: a
transition can at most double them. When neither store answers, verify() returns ``unavailable``
(fail closed) and issue() raises MfaUnavailable.

The outage marker keeps MongoDB off the healthy path. MongoDB can only hold a live code if a code
was issued there (Redis unavailable to that process) less than MFA_CODE_TTL ago. So:
- Each process remembers that it *saw an outage*: an mfa call that fell back to MongoDB, or the
  Redis health gate opening since its last mfa call (any feature's failure opens it). It also keeps
  "MongoDB may hold live codes until T" in memory (fallback time + MFA_CODE_TTL), which it knows
  without Redis.
- Its first mfa call that reaches Redis afterwards publishes T = now + MFA_CODE_TTL to the marker
  ``<prefix>:mfa:mongo_live_until`` (mfa_mark.lua: max semantics, so a smaller T never lowers it;
  the key expires shortly after T). Every code issued on MongoDB by *any* process before that moment
  has expired by T, so a process that saw the outage also covers the codes of one that issued on
  MongoDB and died before Redis returned.
- verify() pipelines its script with a GET of the marker (or with the publishing script): still one
  round trip, two commands. On a Redis miss it consults MongoDB only while max(marker, in-process T)
  is in the future. No outage within MFA_CODE_TTL: a right code, a wrong code, an expired code and a
  replay cost one round trip and zero MongoDB operations, so wrong codes for many users cannot push
  load onto MongoDB. After an outage, each miss costs one MongoDB read (as before) for at most
  MFA_CODE_TTL (plus the time to the publishing call) after Redis returns. issue() sends one command,
  two (pipelined, one round trip) on the call that publishes.
The marker is one key outside the users' hash tags, read in the same pipeline rather than the same
script, so every command still touches one slot.

Residual gap (fail closed): a code issued on MongoDB is not verifiable after Redis returns if no
live process that saw the outage reaches Redis within the code's lifetime, i.e. the issuing process
died before Redis returned and the outage was its alone (a network partition between that process
and Redis; a shared Redis outage is seen by every process that serves an mfa request or any hotcache
call meanwhile). Likewise if the marker is evicted (an ``allkeys-*`` maxmemory policy) before T and
the issuing process is gone. Such a code reports ``expired_or_missing`` and the user asks for a new
one; it never verifies wrongly. A code issued on MongoDB by a process whose gate was still open after
the publishing process recovered is covered by the issuing process's own publish, or by the marker
until T if that process died. The comparison uses app clocks: clock skew between processes shifts
the window by the skew.
"""

from __future__ import annotations

import datetime as dt
import enum
import hmac
import logging
import math
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.utils.crypto import salted_hmac
from redis.exceptions import NoScriptError

from hotcache import clock, keys, metering, signing
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import redis_gate
from hotcache.conf import hotcache_settings
from hotcache.exceptions import (
    BackendUnavailable,
    DuplicateKey,
    HotcacheError,
    InvalidName,
    MongoUnavailable,
    MongoWriteError,
    RedisUnavailable,
)

__all__ = ["MfaUnavailable", "Reason", "ResendTooSoon", "VerifyResult", "issue", "verify"]

log = logging.getLogger("hotcache.mfa")

FEATURE = "mfa"
COLLECTION = "mfa_codes"
_HOUR_MS = 3_600_000
_PURPOSE_PATTERN = r"[A-Za-z0-9_.\-]{1,32}"
_ISSUE = redis_backend.Script("mfa_issue")
_VERIFY = redis_backend.Script("mfa_verify")
_MARK = redis_backend.Script("mfa_mark")
_DROP = redis_backend.Script("mfa_drop")
_MARKER_MARGIN_MS = 1000  # the marker key outlives T by this much (its value, not its TTL, decides)
# hotcache.signing purposes: a code record (identity: its user and purpose) and the outage marker.
_CODE = "mfa.code"
_MARKER = "mfa.marker"
_MARKER_IDENT = "mongo_live_until"
_SKEW_MS = 60_000  # a code record is trusted this long past its TTL: app clocks may disagree by that much
_MAX_CODE_LENGTH = 64  # characters of a typed code looked at; anything longer cannot be a code


class Reason(enum.StrEnum):
    OK = "ok"
    INVALID = "invalid"
    EXPIRED_OR_MISSING = "expired_or_missing"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of verify(); truthy only for ``Reason.OK``."""

    ok: bool
    reason: Reason
    attempts_left: int | None = None  # for INVALID: wrong guesses this code still tolerates
    retry_after: int | None = None  # for TOO_MANY_ATTEMPTS from the user's failure cap: seconds
    store: str = "none"  # where the decision was made: redis | mongodb | none
    burned: bool = False  # this wrong guess used the code's last attempt

    def __bool__(self) -> bool:
        return self.ok


class ResendTooSoon(HotcacheError):
    """issue() was called inside the resend cooldown or over the hourly send cap."""

    def __init__(self, retry_after: int, reason: str = "cooldown") -> None:
        self.retry_after = retry_after
        self.reason = reason  # "cooldown" | "hourly_cap"
        super().__init__(f"a new code can be sent in {retry_after} s ({reason})")


class MfaUnavailable(BackendUnavailable):
    """Neither Redis nor MongoDB answered, so no code could be issued."""

    backend = "redis and mongodb"


# --- shared helpers ------------------------------------------------------------------------------


def _validate(user_id: object, purpose: object) -> tuple[str, str]:
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        if user_id.bit_length() > 512:  # longer than any valid name, and str() refuses the longest ints
            msg = "user_id is an int too large to be a user id"
            raise InvalidName(msg)
        user_id = str(user_id)
    user = keys.validate_name(user_id, what="user_id")
    return user, keys.validate_name(purpose, what="purpose", pattern=_PURPOSE_PATTERN)


def _digest(user: str, purpose: str, code: str) -> str:
    # NUL separators: validated names cannot contain NUL, so (purpose, user, code) maps to one message.
    message = f"{purpose}\x00{user}\x00{code}"
    return salted_hmac("hotcache.mfa", message, algorithm="sha256").hexdigest()


def _redis_keys(user: str, purpose: str) -> dict[str, str]:
    # One hash tag per user: the scripts touch these keys together.
    return {name: keys.tagged(FEATURE, user, purpose, name) for name in ("code", "cool", "sends", "fails")}


def _doc_id(user: str, purpose: str) -> str:
    return f"{purpose}|{user}"  # '|' is allowed in neither part, so the id is unambiguous


def _at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def _now_ms() -> int:
    return int(clock.time() * 1000)


def _seconds(ms: float) -> int:
    return max(1, math.ceil(ms / 1000))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _record_signature(user: str, purpose: str, digest: str, issued_at_ms: int | str) -> str:
    """The signature a code record carries: its digest and issue time, bound to its user and purpose."""
    return signing.signature(_CODE, _doc_id(user, purpose), f"{digest}|{issued_at_ms}")


def _tampered(key: str, why: str) -> None:
    signing.tampered(FEATURE, key, why)


class _IssueReply(NamedTuple):
    """mfa_issue.lua's reply."""

    issued: bool
    retry_ms: int
    reason: str
    bad: str  # 'sends' when the send counter was malformed (reset by the script)

    @classmethod
    def parse(cls, out: Any) -> _IssueReply:
        return cls(int(out[0]) == 1, int(out[1]), _text(out[2]), _text(out[3]))


class _VerifyReply(NamedTuple):
    """mfa_verify.lua's reply. ``digest`` and ``sig`` are the record's, as stored (bytes when from Redis)."""

    status: str
    iat: str
    n: int
    digest: Any
    sig: Any
    bad: str  # 'fails' and/or 'record' when those were malformed (repaired by the script)

    @classmethod
    def parse(cls, out: Any) -> _VerifyReply:
        return cls(_text(out[0]), _text(out[1]), int(out[2]), out[3], out[4], _text(out[5]))


def _collection() -> mongo.Collection:
    return mongo.ensure_indexes(
        COLLECTION,
        feature=FEATURE,
        create=lambda c: c.create_index([("purge_at", mongo.ASCENDING)], expire_after_seconds=0, name="purge_at"),
    )


def _settings() -> dict[str, int]:
    s = hotcache_settings
    return {
        "ttl_ms": int(s.MFA_CODE_TTL) * 1000,
        "digits": int(s.MFA_DIGITS),
        "max_attempts": int(s.MFA_MAX_ATTEMPTS),
        "fail_limit": int(s.MFA_USER_FAILURE_LIMIT),
        "window_ms": int(s.MFA_USER_FAILURE_WINDOW) * 1000,
        "cooldown_ms": int(s.MFA_RESEND_COOLDOWN) * 1000,
        "cap": int(s.MFA_HOURLY_SEND_CAP),
    }


# --- "MongoDB may hold live codes until T" ------------------------------------------------------


class _OutageState:
    """What this process knows about codes MongoDB may hold (module docstring, "The outage marker").

    ``until_ms``: MongoDB may hold live codes until then (app-clock ms), known without Redis.
    ``owed``: this process saw an outage (an mfa fallback, or the Redis gate opening for any feature)
    and has not yet published the marker to Redis since. ``generation`` tells a publish that raced a
    newer outage from one that covers it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.until_ms = 0
            self.owed = False
            self.generation = 0
            self.gate_opens = redis_gate.snapshot().opens

    def saw_outage(self, now_ms: int, ttl_ms: int) -> None:
        """An mfa call fell back to MongoDB: a code may have been issued there until now."""
        with self._lock:
            self.until_ms = max(self.until_ms, now_ms + ttl_ms)
            self.owed = True
            self.generation += 1

    def to_publish(self) -> tuple[int, bool]:
        """(generation, whether the marker is owed); notices a gate that opened since the last call."""
        opens = redis_gate.snapshot().opens
        if opens != self.gate_opens:
            with self._lock:
                if opens != self.gate_opens:
                    self.gate_opens = opens
                    self.owed = True
                    self.generation += 1
        return self.generation, self.owed

    def published(self, generation: int, until_ms: int) -> None:
        with self._lock:
            self.until_ms = max(self.until_ms, until_ms)
            if generation == self.generation:
                self.owed = False


_STATE = _OutageState()


def _reset_process_state() -> None:
    """Forget this process's outage knowledge (tests: behave like a process that never saw an outage)."""
    _STATE.reset()


def _marker_key() -> str:
    # No hash tag: the marker is one key for every user, read in the same pipeline (not the same script)
    # as a user's keys, so each command still touches one slot.
    return keys.build(FEATURE, "mongo_live_until")


def _marker_ms(marker: str, raw: Any) -> int:
    """T from the marker's stored value; 0 when absent or not signed by us (then counted as tampered)."""
    if raw is None:
        return 0
    body = signing.unseal(_MARKER, _MARKER_IDENT, raw)
    if body is None or not re.fullmatch(r"[0-9]{1,16}", body):
        _tampered(marker, "failed verification")
        return 0
    return int(body)


def _run_with_marker(
    r: Any,
    script: redis_backend.Script,
    script_keys: list[str],
    args: list[Any],
    marker: str,
    publish_ms: int | None,
    now_ms: int,
) -> tuple[Any, int]:
    """``script`` and the marker in one pipeline (one round trip): MARK when ``publish_ms``, else GET.

    Returns the script's result and the marker's T (0 when absent or not to be trusted). The marker
    is a signed record: a forged one is ignored, and overwritten when this call publishes.
    """
    pipe = r.pipeline(transaction=False)
    pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
    steps: list[tuple[redis_backend.Script, list[str], list[Any]]] = [(script, script_keys, args)]
    sealed = ""
    ttl_ms = 0
    if publish_ms is None:
        pipe.get(marker)
    else:
        sealed = signing.seal(_MARKER, _MARKER_IDENT, str(publish_ms))
        ttl_ms = max(1, publish_ms - now_ms) + _MARKER_MARGIN_MS
        mark_args = [sealed, publish_ms, ttl_ms]
        pipe.evalsha(_MARK.sha, 1, marker, *mark_args)
        steps.append((_MARK, [marker], mark_args))
    out = pipe.execute(raise_on_error=False)
    for i, (s, k, a) in enumerate(steps):
        if isinstance(out[i], NoScriptError):  # first use on this server: EVAL also caches it
            out[i] = r.eval(s.body, len(k), *k, *a)
    if isinstance(out[0], Exception):
        raise out[0]
    if publish_ms is None:
        if isinstance(out[1], Exception):  # the GET met a key of another type: written from outside hotcache
            _tampered(marker, "is not a string")
            return out[0], 0
        return out[0], _marker_ms(marker, out[1])
    if isinstance(out[1], Exception):
        raise out[1]
    until = _marker_ms(marker, out[1])
    if until < publish_ms:
        # MARK kept a larger T that is not ours (forged): replace it. Only after tampering; one more round trip.
        r.set(marker, sealed, px=ttl_ms)
        until = publish_ms
    return out[0], until


# --- issue ---------------------------------------------------------------------------------------


def issue(user_id: str | int, purpose: str = "login") -> str:
    """A new code for ``user_id`` and ``purpose`` (replacing any earlier one), for the caller to deliver.

    Raises ResendTooSoon inside the resend cooldown or over the hourly cap, MfaUnavailable when
    neither store answers, InvalidName for a bad user_id or purpose.
    """
    user, purpose = _validate(user_id, purpose)
    conf = _settings()
    code = f"{secrets.randbelow(10 ** conf['digits']):0{conf['digits']}d}"
    digest = _digest(user, purpose, code)
    now_ms = _now_ms()
    k = _redis_keys(user, purpose)
    issue_keys = [k["code"], k["cool"], k["sends"]]
    issue_args = [
        digest,
        now_ms,
        conf["ttl_ms"],
        conf["cooldown_ms"],
        conf["cap"],
        _HOUR_MS,
        _record_signature(user, purpose, digest, now_ms),
    ]
    generation, owed = _STATE.to_publish()
    publish_ms = now_ms + conf["ttl_ms"] if owed else None

    def run(r: Any) -> Any:
        if publish_ms is None:
            return _ISSUE(r, issue_keys, issue_args)  # the healthy path: one command
        out, marker = _run_with_marker(r, _ISSUE, issue_keys, issue_args, _marker_key(), publish_ms, now_ms)
        _STATE.published(generation, marker)
        return out

    try:
        out = redis_backend.call(FEATURE, run)
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        _STATE.saw_outage(now_ms, conf["ttl_ms"])
        try:
            _issue_on_mongo(user, purpose, digest, now_ms, conf)
        except (MongoUnavailable, MongoWriteError) as exc:
            metering.event(FEATURE, "unavailable")
            log.warning("hotcache: mfa issue failed: Redis and MongoDB are both unavailable (%s)", exc)
            msg = "cannot issue an MFA code: Redis and MongoDB are both unavailable"
            raise MfaUnavailable(msg) from exc
    else:
        reply = _IssueReply.parse(out)
        if reply.bad:
            _tampered(k["sends"], "was not a send counter; reset")
        if not reply.issued:
            metering.event(FEATURE, "resend_blocked")
            raise ResendTooSoon(_seconds(reply.retry_ms), reply.reason)
    metering.event(FEATURE, "issued")
    return code


def _issue_on_mongo(user: str, purpose: str, digest: str, now_ms: int, conf: dict[str, int]) -> None:
    coll = _collection()
    now = _at(now_ms)
    doc_id = _doc_id(user, purpose)
    code_fields = {
        "d": digest,
        "st": "live",
        "a": 0,
        "issued_at": now,
        "expires_at": _at(now_ms + conf["ttl_ms"]),
        "last_sent_at": now,
    }
    cooldown_over = {
        "$or": [{"last_sent_at": {"$lte": _at(now_ms - conf["cooldown_ms"])}}, {"last_sent_at": {"$exists": False}}]
    }
    keep_until = _at(now_ms + max(conf["ttl_ms"], conf["cooldown_ms"]))
    # Inside the current hour window and under the cap: count the send, replace the code.
    done = coll.find_one_and_update(
        {"_id": doc_id, "$and": [cooldown_over, {"sends_reset_at": {"$gt": now}}, {"sends": {"$lt": conf["cap"]}}]},
        {"$set": code_fields, "$inc": {"sends": 1}, "$max": {"purge_at": keep_until}},
    )
    if done is not None:
        return
    # First send, or the hour window is over: start a new window. The upsert inserts only when no
    # document exists; an existing one that fails the filter makes it hit the unique _id (refused).
    window_over = {"$or": [{"sends_reset_at": {"$lte": now}}, {"sends_reset_at": {"$exists": False}}]}
    try:
        done = coll.find_one_and_update(
            {"_id": doc_id, "$and": [cooldown_over, window_over]},
            {
                "$set": {**code_fields, "sends": 1, "sends_reset_at": _at(now_ms + _HOUR_MS)},
                "$max": {"purge_at": _at(now_ms + max(conf["ttl_ms"], conf["cooldown_ms"], _HOUR_MS))},
            },
            upsert=True,
        )
    except DuplicateKey:
        done = None
    if done is not None:
        return
    metering.event(FEATURE, "resend_blocked")
    doc = coll.find_one({"_id": doc_id}) or {}
    last = doc.get("last_sent_at")
    if last is not None and last + dt.timedelta(milliseconds=conf["cooldown_ms"]) > now:
        left = (last + dt.timedelta(milliseconds=conf["cooldown_ms"]) - now).total_seconds() * 1000
        raise ResendTooSoon(_seconds(left), "cooldown")
    reset_at = doc.get("sends_reset_at")
    if reset_at is not None and reset_at > now:
        raise ResendTooSoon(_seconds((reset_at - now).total_seconds() * 1000), "hourly_cap")
    # The document changed between the two updates (a concurrent issue): treat it as the cooldown.
    raise ResendTooSoon(_seconds(conf["cooldown_ms"]), "cooldown")


# --- verify --------------------------------------------------------------------------------------

_REDIS_REASONS = {
    "missing": Reason.EXPIRED_OR_MISSING,
    "used": Reason.EXPIRED_OR_MISSING,
    "burned": Reason.TOO_MANY_ATTEMPTS,
    "burned_now": Reason.TOO_MANY_ATTEMPTS,
    "invalid": Reason.INVALID,
}


def verify(user_id: str | int, code: str, purpose: str = "login") -> VerifyResult:
    """Check ``code`` for ``user_id`` and ``purpose``, consuming it on success (one success per code, ever).

    Expected outcomes are results, never raises (except InvalidName for a bad user_id or purpose).
    """
    user, purpose = _validate(user_id, purpose)
    conf = _settings()
    if not isinstance(code, str) or len(code) > _MAX_CODE_LENGTH:
        return _record(VerifyResult(False, Reason.INVALID))
    code = "".join(code.split())  # "123 456" as typed from an SMS
    if not re.fullmatch(rf"[0-9]{{{conf['digits']}}}", code):
        return _record(VerifyResult(False, Reason.INVALID))  # cannot be a code: no store is touched
    digest = _digest(user, purpose, code)
    k = _redis_keys(user, purpose)
    now_ms = _now_ms()
    verify_keys = [k["code"], k["fails"]]
    verify_args = [digest, conf["max_attempts"], conf["fail_limit"], conf["window_ms"]]
    generation, owed = _STATE.to_publish()
    publish_ms = now_ms + conf["ttl_ms"] if owed else None

    def run(r: Any) -> tuple[Any, int]:
        out, marker = _run_with_marker(r, _VERIFY, verify_keys, verify_args, _marker_key(), publish_ms, now_ms)
        if publish_ms is not None:
            _STATE.published(generation, marker)
        return out, marker

    try:
        out, marker = redis_backend.call(FEATURE, run)
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        _STATE.saw_outage(now_ms, conf["ttl_ms"])
        try:
            result = _verify_on_mongo(user, purpose, digest, conf, newer_than_ms=None)
        except (MongoUnavailable, MongoWriteError) as exc:
            log.warning("hotcache: mfa verify failed closed: Redis and MongoDB are both unavailable (%s)", exc)
            result = VerifyResult(False, Reason.UNAVAILABLE)
        assert result is not None
        return _record(result)

    reply = _checked(_VerifyReply.parse(out), user, purpose, k, now_ms, conf)
    status, iat, n = reply.status, reply.iat, reply.n
    if status == "ok":
        return _record(VerifyResult(True, Reason.OK, store="redis"))
    if status == "capped":
        return _record(VerifyResult(False, Reason.TOO_MANY_ATTEMPTS, retry_after=_seconds(n), store="redis"))
    redis_result = VerifyResult(
        False,
        _REDIS_REASONS[status],
        attempts_left=n if status == "invalid" else None,
        store="redis",
        burned=status == "burned_now",
    )
    if max(marker, _STATE.until_ms) <= now_ms:
        # No outage within a code's lifetime (no marker in Redis, none known here): MongoDB holds no
        # live code, so Redis's answer is final and MongoDB is not touched.
        return _record(redis_result)
    # Redis holds no usable code for this guess and an outage happened within a code's lifetime: a
    # newer code may have been issued on MongoDB meanwhile (see the module docstring).
    try:
        newer = _verify_on_mongo(user, purpose, digest, conf, newer_than_ms=int(iat) if iat else 0)
    except (MongoUnavailable, MongoWriteError) as exc:
        log.warning("hotcache: mfa could not check MongoDB for a code issued during an outage: %s", exc)
        newer = None
    if newer is None:
        return _record(redis_result)
    if newer.ok and status in ("invalid", "burned_now"):
        # The Redis code predates the one just used: it was superseded, so it must not succeed later.
        try:
            redis_backend.call(FEATURE, lambda r: r.delete(k["code"]))
        except RedisUnavailable:
            log.warning("hotcache: mfa could not delete a superseded Redis code for purpose %s", purpose)
    return _record(newer)


_RECORD_STATUSES = ("ok", "invalid", "burned_now", "used", "burned")  # the script used a record


def _checked(
    reply: _VerifyReply, user: str, purpose: str, k: dict[str, str], now_ms: int, conf: dict[str, int]
) -> _VerifyReply:
    """The script's reply if the record it used is authentic, else the reply for "no record".

    Lua cannot check an HMAC, so the record's signature (digest and issue time, bound to this user
    and purpose) is checked here, after the fact: a forged, swapped or long-replayed record is
    absent, and what the script did to it (consumed it, counted a failure) is undone.
    """
    repaired = reply.bad.split()
    if "fails" in repaired:
        _tampered(k["fails"], "was not a failure counter; reset")
    if "record" in repaired:
        _tampered(k["code"], "was not a code record; deleted")
    if reply.status not in _RECORD_STATUSES:
        return reply
    if not signing.verify(_CODE, _doc_id(user, purpose), f"{_text(reply.digest)}|{reply.iat}", _text(reply.sig)):
        why = "failed verification"
    elif int(reply.iat) + conf["ttl_ms"] + _SKEW_MS < now_ms:
        why = "outlived MFA_CODE_TTL (replayed?)"
    else:
        return reply
    _tampered(k["code"], why)
    counted = reply.status in ("invalid", "burned_now")
    try:
        redis_backend.call(FEATURE, lambda r: _DROP(r, [k["code"], k["fails"]], [reply.sig, 1 if counted else 0]))
    except RedisUnavailable:
        log.warning("hotcache: mfa could not delete a forged code record for purpose %s", purpose)
    return _VerifyReply("missing", "", 0, b"", b"", "")


def _verify_on_mongo(
    user: str, purpose: str, digest: str, conf: dict[str, int], *, newer_than_ms: int | None
) -> VerifyResult | None:
    """Verify against MongoDB. ``newer_than_ms`` set: Redis answered, only a newer live code counts (else None)."""
    coll = _collection()
    now_ms = _now_ms()
    now = _at(now_ms)
    doc_id = _doc_id(user, purpose)
    live: dict[str, Any] = {
        "_id": doc_id,
        "st": "live",
        "expires_at": {"$gt": now},  # the TTL index is only garbage collection
        "a": {"$lt": conf["max_attempts"]},
    }
    if newer_than_ms is not None:
        # Redis answered: only a code issued after the Redis record counts. Normally MongoDB holds
        # none, so this one read is all a Redis miss or wrong guess costs.
        newer = {"_id": doc_id, "issued_at": {"$gt": _at(newer_than_ms)}, "expires_at": {"$gt": now}}
        if coll.find_one(newer, {"_id": 1}) is None:
            return None
        live["issued_at"] = newer["issued_at"]
    uncapped = {"$or": [{"fails": {"$lt": conf["fail_limit"]}}, {"fails_reset_at": {"$lte": now}}, {"fails": None}]}
    # Count the attempt and read the digest in one atomic step.
    doc = coll.find_one_and_update({**live, **uncapped}, {"$inc": {"a": 1}}, return_new=True)
    if doc is None:
        return _mongo_refusal(coll.find_one({"_id": doc_id}), now, conf)
    if hmac.compare_digest(str(doc.get("d", "")), digest):
        # Consume: only one caller can move this exact code from live to used.
        won = coll.find_one_and_update(
            {"_id": doc_id, "st": "live", "d": digest, "issued_at": doc["issued_at"]},
            {"$set": {"st": "used"}, "$unset": {"d": ""}},
        )
        if won is not None:
            return VerifyResult(True, Reason.OK, store="mongodb")
        return VerifyResult(False, Reason.EXPIRED_OR_MISSING, store="mongodb")
    _count_mongo_failure(coll, doc, now_ms, conf)
    left = conf["max_attempts"] - int(doc["a"])
    if left <= 0:
        coll.update_one(
            {"_id": doc_id, "st": "live", "issued_at": doc["issued_at"]},
            {"$set": {"st": "burned"}, "$unset": {"d": ""}},
        )
        return VerifyResult(False, Reason.TOO_MANY_ATTEMPTS, store="mongodb", burned=True)
    return VerifyResult(False, Reason.INVALID, attempts_left=left, store="mongodb")


def _count_mongo_failure(coll: mongo.Collection, doc: dict, now_ms: int, conf: dict[str, int]) -> None:
    now = _at(now_ms)
    reset_at = doc.get("fails_reset_at")
    if reset_at is not None and reset_at > now:
        coll.update_one({"_id": doc["_id"]}, {"$inc": {"fails": 1}})
        return
    # Start a new window, unless another failure just did (then count into that one).
    started = coll.update_one(
        {"_id": doc["_id"], "fails_reset_at": reset_at},
        {
            "$set": {"fails": 1, "fails_reset_at": _at(now_ms + conf["window_ms"])},
            "$max": {"purge_at": _at(now_ms + conf["window_ms"])},
        },
    )
    if not started:
        coll.update_one({"_id": doc["_id"]}, {"$inc": {"fails": 1}})


def _mongo_refusal(doc: dict | None, now: dt.datetime, conf: dict[str, int]) -> VerifyResult:
    """Why the MongoDB fallback found no usable code (Redis is down, so MongoDB's answer is the answer)."""
    if doc is None:
        return VerifyResult(False, Reason.EXPIRED_OR_MISSING, store="mongodb")
    reset_at = doc.get("fails_reset_at")
    if int(doc.get("fails") or 0) >= conf["fail_limit"] and reset_at is not None and reset_at > now:
        retry = _seconds((reset_at - now).total_seconds() * 1000)
        return VerifyResult(False, Reason.TOO_MANY_ATTEMPTS, retry_after=retry, store="mongodb")
    expires_at = doc.get("expires_at")
    if expires_at is None or expires_at <= now or doc.get("st") == "used":
        return VerifyResult(False, Reason.EXPIRED_OR_MISSING, store="mongodb")
    return VerifyResult(False, Reason.TOO_MANY_ATTEMPTS, store="mongodb")


_EVENTS = {
    Reason.OK: "verified",
    Reason.INVALID: "failed",
    Reason.EXPIRED_OR_MISSING: "expired",
    Reason.TOO_MANY_ATTEMPTS: "failed",
    Reason.UNAVAILABLE: "unavailable",
}


def _record(result: VerifyResult) -> VerifyResult:
    if result.burned:
        metering.event(FEATURE, "burned")
    metering.event(FEATURE, _EVENTS[result.reason])
    return result
