"""Outage policies: what each rule does while Redis is unavailable (error, timeout, health gate open).

``open`` admits, ``closed`` refuses with ``Retry-After`` = HEALTH_COOLDOWN, ``local`` (the default) runs the same
sliding window in this process. Entering and leaving degraded mode is logged once each. The process's
``Outage`` lives in ``state.local_state()``. See docs/ratelimit.md.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence

from hotcache import clock, metering
from hotcache.conf import hotcache_settings
from hotcache.ratelimit.limits import Decision, Limit, RuleResult

__all__ = ["POLICIES", "LocalLimiter", "Outage", "policy_of"]

log = logging.getLogger("hotcache.ratelimit")

POLICIES = ("open", "closed", "local")
_FEATURE = "ratelimit"


def policy_of(value: str | None) -> str:
    """``value`` if it names a policy, else RATELIMIT_DEFAULT_POLICY (``local`` if that is invalid too)."""
    if value in POLICIES:
        return str(value)
    default = hotcache_settings.RATELIMIT_DEFAULT_POLICY
    return default if default in POLICIES else "local"


class LocalLimiter:
    """The ``local`` outage policy: the same sliding-window counter, in this process only.

    At most ``size`` entries, the least recently used evicted; an entry two windows old counts as empty.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[str, list[int]] = OrderedDict()  # identity -> [window id, cur, prev]

    def evaluate(self, limits: Sequence[Limit], *, increment: bool, others_allow: bool) -> list[RuleResult]:
        now_ms = int(clock.time() * 1000)
        results: list[RuleResult] = []
        with self._lock:
            states = []
            for lim in limits:
                window_ms = lim.window * 1000
                w = now_ms // window_ms
                elapsed = now_ms - w * window_ms
                state = self._items.get(lim.identity)
                if state is None or state[0] < w - 1:
                    cur, prev = 0, 0
                elif state[0] == w - 1:
                    cur, prev = 0, state[1]
                else:
                    cur, prev = state[1], state[2]
                ok = prev * (window_ms - elapsed) + (cur + lim.cost) * window_ms <= lim.limit * window_ms
                estimate = (prev * (window_ms - elapsed)) // window_ms + cur
                remaining = max(0, lim.limit - estimate - (lim.cost if ok else 0))
                reset = (window_ms - elapsed) / 1000 if ok else _local_retry(lim, cur, prev, elapsed, window_ms)
                states.append((lim, w, cur, prev))
                results.append(
                    RuleResult(lim.name, ok, lim.limit, remaining, reset, lim.window, estimate + lim.cost, "local",
                               lim.headers)
                )
            if increment and others_allow and all(r.allowed for r in results):
                for lim, w, cur, prev in states:
                    self._items[lim.identity] = [w, cur + lim.cost, prev]
                    self._items.move_to_end(lim.identity)
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
        return results

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _local_retry(lim: Limit, cur: int, prev: int, elapsed: int, window_ms: int) -> float:
    if lim.cost > lim.limit:
        return float(lim.window)
    if cur + lim.cost <= lim.limit and prev:
        e = window_ms - ((lim.limit - lim.cost - cur) * window_ms) // prev
        return max(1, e - elapsed) / 1000
    e2 = window_ms - ((lim.limit - lim.cost) * window_ms) // max(1, cur)
    return max(1, (window_ms - elapsed) + max(0, e2)) / 1000


class Outage:
    """The outage policies of this process: the local limiter, and whether rate limiting is degraded (for the log)."""

    def __init__(self, size: int) -> None:
        self.limiter = LocalLimiter(size)
        self.degraded = False
        self._lock = threading.Lock()

    def _transition(self, degraded: bool, reason: str = "") -> None:
        """Log entering and leaving degraded mode once each, not per request."""
        if self.degraded == degraded:
            return
        with self._lock:
            if self.degraded == degraded:
                return
            self.degraded = degraded
        if degraded:
            log.warning("hotcache: rate limiting is degraded (%s); applying each rule's outage policy", reason)
        else:
            log.warning("hotcache: rate limiting is back on Redis")

    def recovered(self) -> None:
        """Redis answered: leave degraded mode (logged once) if this process was in it."""
        if self.degraded:
            self._transition(False)

    def decide(self, limits: Sequence[Limit], *, increment: bool, reason: str) -> Decision:
        """Each rule's outage policy decides; still all-or-nothing (a ``closed`` refusal counts nothing locally).

        Emits ``degraded_<policy>`` per rule when ``increment``; the caller counts the decision itself.
        """
        self._transition(True, reason)
        policies = [policy_of(lim.policy) for lim in limits]
        closed_denies = "closed" in policies
        local_limits = [lim for lim, p in zip(limits, policies, strict=True) if p == "local"]
        local_results = iter(self.limiter.evaluate(local_limits, increment=increment, others_allow=not closed_denies))
        cooldown = float(hotcache_settings.HEALTH_COOLDOWN or 1)
        results: list[RuleResult] = []
        for lim, policy in zip(limits, policies, strict=True):
            if policy == "open":
                res = RuleResult(lim.name, True, lim.limit, lim.limit, float(lim.window), lim.window, 0, "open",
                                 lim.headers)
            elif policy == "closed":
                res = RuleResult(lim.name, False, lim.limit, 0, max(1.0, cooldown), lim.window,
                                 lim.limit + lim.cost, "closed", lim.headers)
            else:
                res = next(local_results)
            results.append(res)
            if increment:
                metering.event(_FEATURE, f"degraded_{policy}")
        return Decision(all(r.allowed for r in results), tuple(results), degraded="redis_unavailable")

    def clear(self) -> None:
        self.limiter.clear()
        with self._lock:
            self.degraded = False
