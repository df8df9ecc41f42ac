"""The health gate (circuit breaker) in front of Redis, one per process.

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
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass

from hotcache import clock
from hotcache.conf import hotcache_settings

__all__ = ["CLOSED", "CONDITION_WINDOW", "OPEN", "PROBING", "GateState", "HealthGate", "redis_gate"]

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

    def allow(self) -> bool:
        """True if the caller may talk to Redis now."""
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

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            if self._state != CLOSED:
                self._state = CLOSED
                self._opened_at = None
                self._cooldown = None
                self._condition = ""
                self._retry_at = None
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
            self._open(condition, cooldown, quota=True)

    def _open(self, condition: str, cooldown: float | None, *, quota: bool = False) -> None:
        """Closed/probing -> open (lock held). Logs the opening, or the condition once per UTC day."""
        was_closed = self._state == CLOSED
        self._state = OPEN
        self._opened_at = clock.monotonic()
        self._cooldown = cooldown
        self._condition = condition
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
            )


def _threshold() -> int:
    return max(1, int(hotcache_settings.HEALTH_FAILURE_THRESHOLD))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


redis_gate = HealthGate("redis")
