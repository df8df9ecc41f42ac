"""The health gate (circuit breaker) in front of Redis, one per process.

closed  -> every call goes to Redis. A refused/reset connection opens the gate at once; timeouts open
           it after HEALTH_FAILURE_THRESHOLD in a row.
open    -> no call goes to Redis for HEALTH_COOLDOWN seconds; features use their fallbacks.
probing -> after the cool-down exactly one caller is let through; success closes the gate,
           failure opens it for another cool-down. Everyone else keeps using the fallback meanwhile.

So a dead Redis costs each process at most one failed attempt per cool-down. Transitions are logged
once each (not per request) and counted.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from hotcache import clock
from hotcache.conf import hotcache_settings

__all__ = ["CLOSED", "OPEN", "PROBING", "GateState", "HealthGate", "redis_gate"]

log = logging.getLogger("hotcache.health")

CLOSED, OPEN, PROBING = "closed", "open", "probing"


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

    def allow(self) -> bool:
        """True if the caller may talk to Redis now."""
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN:
                assert self._opened_at is not None
                if clock.monotonic() - self._opened_at >= float(hotcache_settings.HEALTH_COOLDOWN):
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
                self._recoveries += 1
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
            self._last_error = f"{type(error).__name__}: {error}"[:300]
            threshold = max(1, int(hotcache_settings.HEALTH_FAILURE_THRESHOLD))
            if self._state == PROBING or immediate or self._failures >= threshold:
                if self._state == CLOSED:
                    self._opens += 1
                    log.error(
                        "hotcache: %s unavailable (%s); using fallbacks for %ss",
                        self.name,
                        self._last_error,
                        hotcache_settings.HEALTH_COOLDOWN,
                    )
                self._state = OPEN
                self._opened_at = clock.monotonic()

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
            )


redis_gate = HealthGate("redis")
