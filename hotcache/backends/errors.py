"""What a failed Redis call says about Redis: unreachable, unable to serve anyone, out of quota, or this call only.

redis-py turns most error replies into exception classes and strips the code from the message
(``OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")``, ``status_code="OOM"``), and a
pipeline prefixes it (``"Command # 1 (SET x 1) of pipeline caused error: ..."``). So the code is taken
from the exception's ``status_code`` (redis-py >= 6), else from its class, else from the message's first
word; and the provider's quota errors, which all share the code ``ERR``, by their text wherever it stands.
The health gate acts on the verdict: docs/design/health-gate.md ("What counts as a failure").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from redis import exceptions as rx

__all__ = [
    "CALL",
    "CONNECTION",
    "QUOTA",
    "SERVER_STATE",
    "SERVER_STATE_CODES",
    "TIMEOUT",
    "ClusterStateRefusal",
    "NodeGateOpen",
    "Verdict",
    "classify",
]

CONNECTION, TIMEOUT, SERVER_STATE, QUOTA, CALL = "connection", "timeout", "server_state", "quota", "call"

# Error codes with which Redis refuses every caller (or every writer) until an operator or a failover acts.
SERVER_STATE_CODES = frozenset(
    {"OOM", "READONLY", "LOADING", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS", "MISCONF"}
)

_DESCRIPTIONS = {
    "OOM": "memory full (OOM: maxmemory reached, writes refused)",
    "READONLY": "a read-only replica (READONLY: writes refused)",
    "LOADING": "loading its dataset (LOADING)",
    "BUSY": "busy running a script (BUSY)",
    "MASTERDOWN": "a replica without its master (MASTERDOWN)",
    "CLUSTERDOWN": "the cluster is down (CLUSTERDOWN)",
    "TRYAGAIN": "a slot is being migrated (TRYAGAIN)",
    "NOREPLICAS": "not enough replicas (NOREPLICAS)",
    "MISCONF": "cannot persist to disk (MISCONF: writes refused)",
}

# redis-py's classes for those codes (for a redis-py without ``status_code``). Subclasses come first:
# MasterDownError is a ClusterDownError.
_CLASS_CODES: tuple[tuple[str, str], ...] = (
    ("OutOfMemoryError", "OOM"),
    ("ReadOnlyError", "READONLY"),
    ("BusyLoadingError", "LOADING"),
    ("MasterDownError", "MASTERDOWN"),
    ("ClusterDownError", "CLUSTERDOWN"),
    ("TryAgainError", "TRYAGAIN"),
)

# Upstash's replies when a plan's limit is reached (upstash.com/docs/redis/troubleshooting). Each is "ERR <text>",
# often followed by ". Limit: 10000, Usage: 10000. See ... for details".
# text -> (what ran out, resets at the next UTC day?)
_QUOTAS: dict[str, tuple[str, bool]] = {
    "max daily request limit exceeded": ("the daily request quota", True),
    "max requests limit exceeded": ("the monthly request quota", False),
    "db capacity quota exceeded": ("the database size quota (writes refused)", False),
}
# Limits of the provider that a busy moment reaches and the next moment may not: like a server state.
_PROVIDER_STATES: dict[str, str] = {"max concurrent connections exceeded": "the connection limit"}
# Limits of one request (size of the request, a record or a key): this call's own error, Redis serves others.
_PROVIDER_CALL_LIMITS = ("max request size exceeded", "max single record size exceeded", "max key size exceeded")

_PIPELINE_PREFIX = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ", re.DOTALL)


class ClusterStateRefusal(rx.ResponseError):
    """A cluster node's CLUSTERDOWN or TRYAGAIN (an election or a slot migration under way), as hotcache's cluster
    connections raise it: redis-py's own handling sleeps inside the call (0.25 s and a topology refresh for
    CLUSTERDOWN, up to 16 attempts for TRYAGAIN), while hotcache retries it within the call's time budget
    (hotcache.backends.cluster). ``status_code`` keeps the code, so classify() sees the server state."""


class NodeGateOpen(Exception):  # not an error of Redis: the gate turned the call away
    """A call reached for a cluster node whose health gate is open: nothing was sent to it.

    Not a RedisError, so redis-py's cluster client neither treats it as a node failure (no reconnect, no
    topology refresh) nor lets a feature's ``except RedisError`` inside the call swallow it; ``call()`` turns it
    into ``RedisUnavailable(gate_open=True)``.
    """

    def __init__(self, address: str) -> None:
        super().__init__(f"the health gate of redis node {address} is open")
        self.address = address


@dataclass(frozen=True, slots=True)
class Verdict:
    """How the health gate treats one failed call."""

    kind: str  # CONNECTION | TIMEOUT | SERVER_STATE | QUOTA | CALL
    code: str  # the Redis error code ("OOM", "ERR", ...); "" for a connection failure
    condition: str  # what Redis (or its provider) reported, for logs and the gate's snapshot; "" if nothing
    daily: bool = False  # a quota that resets at the next UTC day

    @property
    def server_answered(self) -> bool:
        """An error reply: the server answered, so it did not run the refused command (maybe_applied=False)."""
        return self.kind in (SERVER_STATE, QUOTA, CALL)


def error_code(exc: BaseException) -> str:
    """The Redis error code of an error reply, whatever redis-py did with the message."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, str) and status:
        return status.upper()
    for name, code in _CLASS_CODES:
        cls = getattr(rx, name, None)
        if cls is not None and isinstance(exc, cls):
            return code
    word = _message(exc).split(" ", 1)[0]
    return word if word.isupper() and word.isalpha() else ""


def classify(exc: BaseException) -> Verdict:
    """The verdict on a redis-py error (or a bare OSError) raised by a call."""
    if isinstance(exc, rx.RedisClusterException):
        return _cluster_verdict(exc)
    text = _message(exc).lower()
    for phrase, (what, daily) in _QUOTAS.items():
        if phrase in text:
            return Verdict(QUOTA, error_code(exc) or "ERR", what, daily)
    for phrase, what in _PROVIDER_STATES.items():
        if phrase in text:
            return Verdict(SERVER_STATE, error_code(exc) or "ERR", what)
    if any(phrase in text for phrase in _PROVIDER_CALL_LIMITS):
        return Verdict(CALL, error_code(exc) or "ERR", "")
    code = error_code(exc)
    if code in SERVER_STATE_CODES:  # before ConnectionError: redis-py's BusyLoadingError (LOADING) is one
        return Verdict(SERVER_STATE, code, _DESCRIPTIONS[code])
    if isinstance(exc, rx.TimeoutError):
        return Verdict(TIMEOUT, "", "")
    if isinstance(exc, rx.ConnectionError):
        return Verdict(CONNECTION, code if code else "", "")
    if isinstance(exc, rx.RedisError):
        return Verdict(CALL, code, "")
    return Verdict(TIMEOUT, "", "")  # a bare OSError: counted like a timeout, toward the threshold


def _message(exc: BaseException) -> str:
    text = str(exc.args[0]) if exc.args else str(exc)
    return _PIPELINE_PREFIX.sub("", text, count=1)


def _cluster_verdict(exc: rx.RedisClusterException) -> Verdict:
    """redis-py's cluster client raises these outside RedisError (hotcache.backends.cluster).

    No node reachable (its topology refresh failed): like a refused connection. A slot no node serves (a
    failover under way): a server state. Anything else (keys of one call on different slots, a command the
    cluster client refuses) is raised before sending: this call's own fault.
    """
    if isinstance(exc, rx.SlotNotCoveredError):
        return Verdict(SERVER_STATE, "CLUSTERDOWN", "a hash slot no cluster node serves")
    text = str(exc).lower()
    if "cannot be connected" in text or "reachable" in text:
        return Verdict(CONNECTION, "", "")
    return Verdict(CALL, "", "")
