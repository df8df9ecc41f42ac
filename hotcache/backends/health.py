"""The health gate (circuit breaker) in front of Redis, one per process and one per node of a Redis Cluster.

closed  -> every call goes to Redis. A refused/reset connection or a provider's quota error opens the
           gate at once; timeouts open it after HEALTH_FAILURE_THRESHOLD in a row; server-state errors
           (OOM, READONLY, LOADING, CLUSTERDOWN...) after HEALTH_FAILURE_THRESHOLD within CONDITION_WINDOW,
           whatever succeeded in between (a Redis that refuses writes still serves reads).
open    -> no call goes to Redis for HEALTH_COOLDOWN seconds (a quota: until the next UTC day for a daily
           quota, HEALTH_QUOTA_COOLDOWN otherwise); features use their fallbacks.
probing -> after the cool-down exactly one caller is let through; success closes the gate,
           failure opens it for another cool-down. Everyone else keeps using the fallback meanwhile.

So a dead Redis costs each process at most one failed attempt per cool-down. Transitions are logged
once each (not per request) and counted; a condition Redis reports (memory full, read-only, a quota)
is logged once per process and UTC day, however often the gate opens for it.

On a Redis Cluster each node has a gate of its own (``redis_gate.node(address)``, asked by
hotcache.backends.cluster before any byte goes to that node): a dead master sends only its slots' work to
the fallbacks while the other masters keep serving. ``redis_gate`` itself then stands for the cluster as a
whole (no node reachable at all), and its ``snapshot()`` summarises every node's gate for the reports.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from hotcache import clock
from hotcache.backends import errors
from hotcache.conf import hotcache_settings

__all__ = [
    "CLOSED",
    "CONDITION_WINDOW",
    "OPEN",
    "PROBING",
    "GateState",
    "HealthGate",
    "RedisGate",
    "redis_gate",
]

log = logging.getLogger("hotcache.health")

CLOSED, OPEN, PROBING = "closed", "open", "probing"
# Server-state errors this close together count as "in a row" even with successes between them: on a
# Redis that refuses writes, reads keep succeeding, and a request mixes both.
CONDITION_WINDOW = 60.0
_DAY = 86_400


@dataclass(frozen=True, slots=True)
class GateState:
    name: str
    state: str
    consecutive_failures: int
    opened_at: float | None
    opens: int  # closed -> open transitions in this process
    recoveries: int  # open -> closed transitions in this process
    rejected: int  # calls turned away while open
    last_error: str
    condition: str = ""  # what Redis reported when the gate opened ("OOM", "the daily request quota"...); "" otherwise
    retry_at: float | None = None  # epoch seconds after which the next caller probes; None while closed
    quota: bool = False  # opened because the provider's quota ran out (condition names it)

    def reason(self, now: float | None = None) -> str:
        """Why the gate is not closed and when it tries Redis again, in one line for the reports and
        hotcache_status ("Redis cannot serve: memory full (OOM...), retry at 07:12:30 UTC"); "" when closed."""
        if self.state == CLOSED:
            return ""
        if self.quota:
            why = f"{self.name.capitalize()} refused calls: {self.condition} ran out"
        elif self.condition:
            why = f"{self.name.capitalize()} cannot serve: {self.condition}"
        else:
            why = f"{self.name.capitalize()} unavailable" + (f" ({self.last_error})" if self.last_error else "")
        if self.state == PROBING:
            return f"{why}; one call is probing it now"
        if self.retry_at is None:
            return why
        return f"{why}, retry at {_utc_time(self.retry_at, clock.time() if now is None else now)}"


class HealthGate:
    """Thread-safe breaker. Call allow() before the call, then success() or failure()."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._state = CLOSED
            self._failures = 0
            self._opened_at: float | None = None
            self._opens = 0
            self._recoveries = 0
            self._rejected = 0
            self._last_error = ""
            self._cooldown: float | None = None  # this opening's cool-down when not HEALTH_COOLDOWN
            self._condition = ""
            self._condition_count = 0
            self._condition_at: float | None = None
            self._logged: set[tuple[str, int]] = set()  # (condition, UTC day) already logged
            self._open_logged = False
            self._retry_at: float | None = None
            self._answering = False  # opened by a server state: Redis still answers (reads, deletions)
            self._quota = False

    def allow(self) -> bool:
        """True if the caller may talk to Redis now."""
        if self._state == CLOSED:
            # Read without the lock (one attribute read is atomic): a gate opening at this instant lets this
            # call through as if it had come a moment earlier, which the lock would also have allowed.
            return True
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN:
                assert self._opened_at is not None
                if clock.monotonic() - self._opened_at >= self._current_cooldown():
                    self._state = PROBING  # this caller is the one probe
                    return True
            self._rejected += 1
            return False

    def answering(self) -> bool:
        """True while the gate is open because Redis answered that it cannot serve (a server state: memory
        full, read-only...), not because it was unreachable or a quota ran out. Such a Redis still serves
        reads and deletions to every process (see redis.call(..., deletion=True))."""
        with self._lock:
            return self._state != CLOSED and self._answering

    def success(self) -> None:
        if self._state == CLOSED and not self._failures:
            # Nothing to reset (every call's case): read without the lock, as if this success came just before
            # a failure another thread records at this instant.
            return
        with self._lock:
            self._failures = 0
            if self._state != CLOSED:
                self._state = CLOSED
                self._answering = False
                self._opened_at = None
                self._cooldown = None
                self._condition = ""
                self._retry_at = None
                self._quota = False
                self._recoveries += 1
                if self._open_logged:
                    log.warning("hotcache: %s is back; leaving fallback mode", self.name)

    def abandon(self) -> None:
        """The call allowed by allow() ended without telling whether Redis is healthy (the caller's own code
        raised): if it was the probe, the next caller probes instead, so the gate can never stay probing."""
        with self._lock:
            if self._state == PROBING:
                self._state = OPEN  # opened_at is unchanged: the cool-down has passed, the next allow() probes

    def failure(self, error: BaseException, *, immediate: bool = False) -> None:
        """Record a failed call. ``immediate`` (connection refused or reset) opens the gate at once."""
        with self._lock:
            self._failures += 1
            self._last_error = _describe(error)
            self._answering = False  # unreachable or hanging now, whatever opened the gate
            if self._state == PROBING or immediate or self._failures >= _threshold():
                self._open("", None)

    def server_state(self, error: BaseException, condition: str) -> None:
        """Redis answered that it cannot serve (``condition``: OOM, READONLY, LOADING, CLUSTERDOWN...).

        Opens the gate at HEALTH_FAILURE_THRESHOLD such errors within CONDITION_WINDOW seconds of each other,
        successes in between notwithstanding; after the gate closed again, the next one reopens it at once.
        """
        with self._lock:
            now = clock.monotonic()
            if self._condition_at is None or now - self._condition_at > CONDITION_WINDOW:
                self._condition_count = 0
            self._condition_count += 1
            self._condition_at = now
            self._failures += 1
            self._last_error = _describe(error)
            threshold = _threshold()
            if self._state == PROBING or self._condition_count >= threshold or self._failures >= threshold:
                self._open(condition, None)
                self._answering = True

    def quota(self, error: BaseException, condition: str, *, daily: bool) -> None:
        """The provider refused the call because ``condition`` ran out: open at once, for a long cool-down
        (until the next UTC day for a daily quota, HEALTH_QUOTA_COOLDOWN otherwise)."""
        with self._lock:
            self._failures += 1
            self._last_error = _describe(error)
            if daily:
                cooldown = _DAY - clock.time() % _DAY
            else:
                cooldown = float(hotcache_settings.HEALTH_QUOTA_COOLDOWN)
            self._answering = False  # a request quota refuses every call
            self._open(condition, cooldown, quota=True)

    def judge(self, error: BaseException, verdict: errors.Verdict, *, report: bool = True) -> None:
        """Record a failed call by what it says about Redis (errors.classify): unreachable opens at once,
        timeouts and server states count toward the threshold, a quota opens for long, an error reply of the call
        itself is a success (Redis answered). ``report=False`` (a deletion sent past an open gate): only a
        connection failure or a timeout is recorded."""
        if not report:
            if not verdict.server_answered:
                self.failure(error, immediate=verdict.kind == errors.CONNECTION)
        elif verdict.kind == errors.CONNECTION:
            self.failure(error, immediate=True)
        elif verdict.kind == errors.TIMEOUT:
            self.failure(error)
        elif verdict.kind == errors.SERVER_STATE:
            self.server_state(error, verdict.condition)
        elif verdict.kind == errors.QUOTA:
            self.quota(error, verdict.condition, daily=verdict.daily)
        else:
            self.success()

    def _open(self, condition: str, cooldown: float | None, *, quota: bool = False) -> None:
        """Closed/probing -> open (lock held). Logs the opening, or the condition once per UTC day."""
        was_closed = self._state == CLOSED
        self._state = OPEN
        self._opened_at = clock.monotonic()
        self._cooldown = cooldown
        self._condition = condition
        self._quota = quota
        self._retry_at = clock.time() + self._current_cooldown()
        if not was_closed:
            return  # a failed probe: the gate was never closed, nothing new to say
        self._opens += 1
        if condition:
            key = (condition, int(clock.time() // _DAY))
            self._open_logged = key not in self._logged
            if not self._open_logged:
                return
            self._logged.add(key)
            if quota:
                until = dt.datetime.fromtimestamp(self._retry_at, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                log.error(
                    "hotcache: %s refused calls because %s ran out (%s); using fallbacks until %s",
                    self.name,
                    condition,
                    self._last_error,
                    until,
                )
            else:
                log.error(
                    "hotcache: %s cannot serve: %s (%s); using fallbacks, probing every %ss",
                    self.name,
                    condition,
                    self._last_error,
                    self._current_cooldown(),
                )
            return
        self._open_logged = True
        log.error(
            "hotcache: %s unavailable (%s); using fallbacks for %ss",
            self.name,
            self._last_error,
            hotcache_settings.HEALTH_COOLDOWN,
        )

    def _current_cooldown(self) -> float:
        return self._cooldown if self._cooldown is not None else float(hotcache_settings.HEALTH_COOLDOWN)

    @property
    def state(self) -> str:
        return self._state

    def snapshot(self) -> GateState:
        with self._lock:
            return GateState(
                name=self.name,
                state=self._state,
                consecutive_failures=self._failures,
                opened_at=self._opened_at,
                opens=self._opens,
                recoveries=self._recoveries,
                rejected=self._rejected,
                last_error=self._last_error,
                condition=self._condition,
                retry_at=self._retry_at,
                quota=self._quota,
            )


class RedisGate(HealthGate):
    """The process's gate in front of Redis, and on a Redis Cluster one gate per node besides.

    ``allow()``, ``state`` and the other HealthGate methods are the process gate's own: the single server, or the
    cluster as a whole (no node reachable). ``node(address)`` is a node's gate; ``snapshot()`` is what the reports
    show: the process gate while it is not closed, else the first node gate that is not (named after its node),
    with opens, recoveries and rejections summed over every gate, so a watcher of ``opens`` (MFA's outage
    marker) sees a node's outage too.
    """

    def __init__(self, name: str) -> None:
        self._nodes: dict[str, HealthGate] = {}
        self._members: Callable[[], set[str]] | None = None
        super().__init__(name)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._nodes = {}  # the members watcher belongs to the client and stays

    def node(self, address: str) -> HealthGate:
        """The gate of the cluster node at ``address`` ("host:port"), created closed on first use."""
        gate = self._nodes.get(address)
        if gate is None:
            with self._lock:
                gate = self._nodes.get(address)
                if gate is None:
                    gate = HealthGate(f"{self.name} node {address}")
                    self._nodes[address] = gate
        return gate

    def watch_members(self, members: Callable[[], set[str]] | None) -> None:
        """``members()`` names the nodes the client routes to now (its masters): a gate of a node that left
        (a dead master whose replica took over) no longer counts as down in snapshot()."""
        self._members = members

    def node_snapshots(self) -> dict[str, GateState]:
        """Each cluster node's gate ({} on a single server), by address, of the nodes the client routes to."""
        with self._lock:
            gates = dict(self._nodes)
        members = self._current_members()
        return {
            address: gate.snapshot()
            for address, gate in sorted(gates.items())
            if members is None or address in members or gate.state == CLOSED
        }

    def _current_members(self) -> set[str] | None:
        members = self._members
        if members is None:
            return None
        try:
            return members()
        except Exception:  # a topology being rebuilt: judge every gate
            return None

    def snapshot(self) -> GateState:
        own = super().snapshot()
        with self._lock:
            gates = dict(self._nodes)
        if not gates:
            return own
        every = [gate.snapshot() for gate in gates.values()]
        opens = own.opens + sum(s.opens for s in every)
        recoveries = own.recoveries + sum(s.recoveries for s in every)
        rejected = own.rejected + sum(s.rejected for s in every)
        down = [s for s in self.node_snapshots().values() if s.state != CLOSED]
        shown = own
        if own.state == CLOSED and down:
            shown = min(down, key=lambda s: (s.state != OPEN, s.retry_at or 0.0))
            if len(down) > 1:
                addresses = ", ".join(s.name.rsplit(" ", 1)[-1] for s in down)
                shown = replace(shown, name=f"{self.name} nodes {addresses}")
        return replace(shown, opens=opens, recoveries=recoveries, rejected=rejected)


def _threshold() -> int:
    return max(1, int(hotcache_settings.HEALTH_FAILURE_THRESHOLD))


def _utc_time(at: float, now: float) -> str:
    """``at`` as "HH:MM[:SS] UTC", with its date when that is not ``now``'s UTC day."""
    when = dt.datetime.fromtimestamp(round(at), tz=dt.UTC)  # a daily quota's midnight, not 23:59:59.999
    text = when.strftime("%H:%M" if when.second == 0 else "%H:%M:%S") + " UTC"
    if when.date() != dt.datetime.fromtimestamp(now, tz=dt.UTC).date():
        text += when.strftime(" on %Y-%m-%d")
    return text


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


redis_gate = RedisGate("redis")
