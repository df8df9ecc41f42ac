"""The Redis path: the issue and verify scripts, the outage marker in the same pipeline, the record's signature
check, and the burns owed for records a lost reply may have left. See docs/mfa.md.

Keys: one hash per user and purpose, ``{mfa:<user>}:<purpose>:code``: the code record (d/a/iat/st/s) and the
user's windows beside it (c cooldown, n/nw sends, f/fw failures), so an issue or a verify reads and writes one
key (billed: 3-4 commands). The scripts are hotcache/backends/lua/mfa_*.lua.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from hotcache import keys, metering, recovery, signing
from hotcache.backends import cluster
from hotcache.backends import redis as redis_backend
from hotcache.exceptions import RedisUnavailable
from hotcache.mfa import _marker
from hotcache.mfa._codes import CODE_SIGNING, doc_id, record_signature
from hotcache.mfa._conf import FEATURE, HOUR_MS, Limits, log, seconds, text
from hotcache.mfa._results import ResendTooSoon

__all__ = [
    "DROP",
    "ISSUE",
    "MARK",
    "VERIFY",
    "RedisAnswer",
    "drop_superseded",
    "issue",
    "owe_burn",
    "verify",
]

ISSUE = redis_backend.Script("mfa_issue")
VERIFY = redis_backend.Script("mfa_verify")
MARK = redis_backend.Script("mfa_mark")
DROP = redis_backend.Script("mfa_drop")
_MARKER_MARGIN_MS = 1000  # the marker key outlives T by this much (its value, not its TTL, decides)
_SKEW_MS = 60_000  # a code record is trusted this long past its TTL: app clocks may disagree by that much
_RECORD_STATUSES = ("ok", "invalid", "burned_now", "used", "burned")  # the verify script used a record


class _Keys(NamedTuple):
    code: str  # the code record and the user's cooldown, send and failure windows (one hash)


def _keys(user: str, purpose: str) -> _Keys:
    # One hash tag per user. The name is the code record's from before the windows moved into it: a record
    # written by an earlier release reads the same (docs/mfa.md, "Upgrading").
    return _Keys(keys.tagged(FEATURE, user, purpose, "code"))


class _IssueReply(NamedTuple):
    """mfa_issue.lua's reply."""

    issued: bool
    retry_ms: int
    reason: str
    bad: str  # 'sends' when the cooldown or send window was malformed (reset by the script)

    @classmethod
    def parse(cls, out: Any) -> _IssueReply:
        return cls(int(out[0]) == 1, int(out[1]), text(out[2]), text(out[3]))


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
        return cls(text(out[0]), text(out[1]), int(out[2]), out[3], out[4], text(out[5]))


class RedisAnswer(NamedTuple):
    """What Redis said to a verify: the script's status for an authentic record, and the marker's T."""

    status: str  # ok | capped | missing | used | burned | burned_now | invalid
    iat: str  # the record's issue time (app-clock ms), '' without a record
    n: int  # attempts left (invalid), ms until the failure window ends (capped)
    marker_ms: int


# --- burns owed after a lost issue reply ------------------------------------------------------------


class _Burn(NamedTuple):
    """A code record Redis may hold although its code was never handed out (the issue's reply was lost)."""

    code_key: str
    signature: str  # deletes that record only, never a newer one


_BURNS: recovery.Deferred[_Burn] = recovery.Deferred()


def owe_burn(user: str, purpose: str, code_digest: str, issued_at_ms: int) -> None:
    """Delete, with this process's next mfa call that reaches Redis, the record a lost issue may have written."""
    k = _keys(user, purpose)
    _BURNS.add(_Burn(k.code, record_signature(user, purpose, code_digest, issued_at_ms)))


def _burn(r: Any, burns: set[_Burn]) -> None:
    # mfa_drop.lua deletes a record only while it carries this signature (a code issued since is kept);
    # 0: no failure to give back. Idempotent, so a burn whose own reply is lost is simply sent again.
    for burn in burns:
        DROP(r, [burn.code_key], [burn.signature, 0])


# --- issue and verify -------------------------------------------------------------------------------


def issue(user: str, purpose: str, code_digest: str, now_ms: int, conf: Limits) -> None:
    """Store the code's record (replacing any earlier one); ResendTooSoon inside the cooldown or over the cap.

    One command, one round trip; two commands (pipelined) on the call that publishes the marker, and
    one more round trip on the call that sends owed burns. Raises RedisUnavailable.
    """
    k = _keys(user, purpose)
    issue_keys = [k.code]
    issue_args = [
        code_digest,
        now_ms,
        conf.ttl_ms,
        conf.cooldown_ms,
        conf.cap,
        HOUR_MS,
        record_signature(user, purpose, code_digest, now_ms),
        conf.window_ms,
    ]
    generation, owed = _marker.to_publish()
    publish_ms = now_ms + conf.ttl_ms if owed else None
    burns = _BURNS.snapshot() if _BURNS else set()

    def run(r: Any) -> Any:
        if burns:
            _burn(r, burns)
        if publish_ms is None:
            return ISSUE(r, issue_keys, issue_args)  # the healthy path: one command
        out, marker = _run_with_marker(r, ISSUE, issue_keys, issue_args, publish_ms, now_ms)
        _marker.published(generation, marker)
        return out

    reply = _IssueReply.parse(redis_backend.call(FEATURE, run))
    _BURNS.done(burns)
    if reply.bad:
        signing.tampered(FEATURE, k.code, "held a cooldown or send count that was not a number; reset")
    if not reply.issued:
        metering.event(FEATURE, "resend_blocked")
        raise ResendTooSoon(seconds(reply.retry_ms), reply.reason)


def verify(user: str, purpose: str, code_digest: str, now_ms: int, conf: Limits) -> RedisAnswer:
    """Run the verify script and read (or publish) the marker: one round trip, two commands. Raises RedisUnavailable.

    A record whose signature fails, or that outlived its TTL, is answered as ``missing``.
    """
    k = _keys(user, purpose)
    verify_keys = [k.code]
    verify_args = [code_digest, conf.max_attempts, conf.fail_limit, conf.window_ms, now_ms, conf.ttl_ms]
    generation, owed = _marker.to_publish()
    publish_ms = now_ms + conf.ttl_ms if owed else None
    burns = _BURNS.snapshot() if _BURNS else set()

    def run(r: Any) -> tuple[Any, int]:
        if burns:
            _burn(r, burns)
        out, marker = _run_with_marker(r, VERIFY, verify_keys, verify_args, publish_ms, now_ms)
        if publish_ms is not None:
            _marker.published(generation, marker)
        return out, marker

    out, marker = redis_backend.call(FEATURE, run)
    _BURNS.done(burns)
    reply = _checked(_VerifyReply.parse(out), user, purpose, k, now_ms, conf)
    return RedisAnswer(reply.status, reply.iat, reply.n, marker)


def drop_superseded(user: str, purpose: str) -> None:
    """Delete the user's Redis record: a newer code (issued on MongoDB during an outage) just succeeded."""
    code_key = _keys(user, purpose).code
    try:
        redis_backend.call(FEATURE, lambda r: r.delete(code_key))
    except RedisUnavailable:
        log.warning("hotcache: mfa could not delete a superseded Redis code for purpose %s", purpose)


def _run_with_marker(
    r: Any,
    script: redis_backend.Script,
    script_keys: list[str],
    args: list[Any],
    publish_ms: int | None,
    now_ms: int,
) -> tuple[Any, int]:
    """``script`` and the marker in one pipeline (one round trip): MARK when ``publish_ms``, else GET.

    Returns the script's result and the marker's T (0 when absent or not to be trusted). The marker
    is a signed record: a forged one is ignored, and overwritten when this call publishes.
    """
    marker = _marker.marker_key_near(r, script_keys[0])
    copies = [marker] if publish_ms is None else _marker.marker_keys()
    commands: list[tuple[Any, ...]] = [("EVALSHA", script.sha, len(script_keys), *script_keys, *args)]
    steps: list[tuple[redis_backend.Script, list[str], list[Any]]] = [(script, script_keys, args)]
    sealed = ""
    ttl_ms = 0
    if publish_ms is None:
        commands.append(("GET", marker))
    else:
        sealed = _marker.seal(publish_ms)
        ttl_ms = max(1, publish_ms - now_ms) + _MARKER_MARGIN_MS
        mark_args = [sealed, publish_ms, ttl_ms]
        for copy in copies:  # the one key; on a cluster every copy
            commands.append(("EVALSHA", MARK.sha, 1, copy, *mark_args))
            steps.append((MARK, [copy], mark_args))
    out = _pipelined(r, commands)
    missing = [i for i in range(len(steps)) if isinstance(out[i], NoScriptError)]
    if len(missing) > 1 and isinstance(r, RedisCluster):
        # Nodes that know no script (a fresh or failed-over master) answer NOSCRIPT for each of the marker's copies:
        # load each missing script on every master and send those commands (not run) again, one round trip per
        # node, instead of one EVAL per copy (up to COPIES round trips).
        for script in {steps[i][0].name: steps[i][0] for i in missing}.values():
            r.script_load(script.body)
        for i, reply in zip(missing, _pipelined(r, [commands[i] for i in missing]), strict=True):
            out[i] = reply
    for i, (s, k, a) in enumerate(steps):
        if isinstance(out[i], NoScriptError):  # first use on this server: EVAL also caches it
            out[i] = r.eval(s.body, len(k), *k, *a)
        out[i] = s.reply(out[i])
    if isinstance(out[0], Exception):
        raise out[0]
    if publish_ms is None:
        if isinstance(out[1], Exception):  # the GET met a key of another type: written from outside hotcache
            signing.tampered(FEATURE, marker, "is not a string")
            return out[0], 0
        return out[0], _marker.marker_ms(out[1])
    highest = 0
    for copy, reply in zip(copies, out[1:], strict=True):
        if isinstance(reply, Exception):
            raise reply
        until = _marker.marker_ms(reply)
        if until < publish_ms:
            # MARK kept a larger T that is not ours (forged): replace it. Only after tampering; one more round trip.
            r.set(copy, sealed, px=ttl_ms)
            until = publish_ms
        highest = max(highest, until)
    return out[0], highest


def _pipelined(r: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """``commands`` in one pipeline (one round trip; on a cluster one per node, each command sent once: redis-py's
    cluster pipeline would re-send a verify whose reply timed out, and a consumed code would then answer ``used``)."""
    if isinstance(r, RedisCluster):
        return cluster.send_once(r, commands)
    pipe = r.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return list(pipe.execute(raise_on_error=False))


def _checked(reply: _VerifyReply, user: str, purpose: str, k: _Keys, now_ms: int, conf: Limits) -> _VerifyReply:
    """The script's reply if the record it used is authentic, else the reply for "no record".

    Lua cannot check an HMAC, so the record's signature (digest and issue time, bound to this user
    and purpose) is checked here, after the fact: a forged, swapped or long-replayed record is
    absent, and what the script did to it (consumed it, counted a failure) is undone.
    """
    repaired = reply.bad.split()
    if "fails" in repaired:
        signing.tampered(FEATURE, k.code, "held a failure count that was not a number; reset")
    if "record" in repaired:
        signing.tampered(FEATURE, k.code, "was not a code record; deleted")
    if reply.status not in _RECORD_STATUSES:
        return reply
    if not signing.verify(CODE_SIGNING, doc_id(user, purpose), f"{text(reply.digest)}|{reply.iat}", text(reply.sig)):
        why = "failed verification"
    elif int(reply.iat) + conf.ttl_ms + _SKEW_MS < now_ms:
        why = "outlived MFA_CODE_TTL (replayed?)"
    else:
        return reply
    signing.tampered(FEATURE, k.code, why)
    counted = reply.status in ("invalid", "burned_now")
    try:
        redis_backend.call(FEATURE, lambda r: DROP(r, [k.code], [reply.sig, 1 if counted else 0]))
    except RedisUnavailable:
        log.warning("hotcache: mfa could not delete a forged code record for purpose %s", purpose)
    return _VerifyReply("missing", "", 0, b"", b"", "")
