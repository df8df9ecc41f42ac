"""The values of one check: ``Limit`` (a rule applied to one identifier) in, ``RuleResult`` per rule and the
request's ``Decision`` out. ``Limit`` is the one place that bounds what reaches keys, events and caches.

See docs/ratelimit.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from hotcache import keys
from hotcache.exceptions import InvalidName
from hotcache.ratelimit.rates import MAX_COUNT, MAX_WINDOW, InvalidRate

__all__ = ["MAX_IDENTIFIER", "MAX_NAME", "Decision", "Limit", "RuleResult"]

MAX_IDENTIFIER = 256  # characters of a client-supplied identifier (header, GET/POST field, API key)
MAX_NAME = 200  # characters of a rule name or decorator group

# What keys.text accepts as a name (no C0/C1 controls, no lone surrogates, 1..MAX_NAME characters).
_PRINTABLE_NAME = re.compile(f"[^\x00-\x1f\x7f-\x9f\ud800-\udfff]{{1,{MAX_NAME}}}")


@dataclass(frozen=True, slots=True)
class Limit:
    """One rule applied to one identifier: at most ``limit`` units of cost per ``window`` seconds."""

    name: str
    identifier: str
    limit: int
    window: int
    policy: str = "local"
    cost: int = 1
    headers: bool = False
    # Derived once per Limit, not per request (the middleware reuses one Limit per rule and identifier): the
    # deny-cache identity and the script's arguments. Not compared, not shown.
    identity: str = field(init=False, repr=False, compare=False)
    wire: tuple[int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The one check of what reaches keys, metering event names (``allowed:<name>``) and the
        # process-local caches, whoever built the Limit: printable names, bounded numbers. Once per
        # rule per request, so the common case is a few type tests and one regex match.
        if not (type(self.name) is str and _PRINTABLE_NAME.fullmatch(self.name)):
            keys.text(self.name, what="rate limit name", max_length=MAX_NAME)  # raises, naming the problem
        if type(self.identifier) is not str or len(self.identifier) > MAX_IDENTIFIER:
            raise InvalidName(f"rate limit identifier must be a string of at most {MAX_IDENTIFIER} characters")
        if not (
            type(self.limit) is int
            and 0 <= self.limit <= MAX_COUNT
            and type(self.window) is int
            and 1 <= self.window <= MAX_WINDOW
            and type(self.cost) is int
            and 1 <= self.cost <= MAX_COUNT
        ):
            raise InvalidRate(
                f"rate limit ({self.limit!r:.40}, {self.window!r:.40}, cost {self.cost!r:.40}) must be "
                f"whole numbers: 0 <= limit <= 10**12, 1 <= window <= {MAX_WINDOW}, 1 <= cost <= 10**12"
            )
        # identity: rule name, window and identifier: a changed window gets fresh counters (the parity
        # keys depend on it); a changed limit keeps the counts.
        derived = object.__setattr__  # frozen: set once here, never changed
        derived(self, "identity", f"{self.name}|{self.window}|{self.identifier}")
        derived(self, "wire", (self.limit, self.window * 1000, self.cost))


@dataclass(frozen=True, slots=True)
class RuleResult:
    name: str
    allowed: bool
    limit: int
    remaining: int
    reset: float  # seconds: until this cost fits (denied) or until the current window ends (allowed)
    window: int
    count: int  # weighted estimate including this request's cost
    source: str  # redis | deny_cache | skipped | open | closed | local | missing_key
    headers: bool = False

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset))

    @property
    def evaluated(self) -> bool:
        return self.source != "skipped"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one request: ``allowed`` only if every rule allowed it."""

    allowed: bool
    results: tuple[RuleResult, ...] = ()
    degraded: str | None = None  # "redis_unavailable" when outage policies decided

    def __getitem__(self, name: str) -> RuleResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def denied(self) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.results if not r.allowed)

    @property
    def retry_after(self) -> int:
        return max((r.retry_after for r in self.denied), default=1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "degraded": self.degraded,
            "rules": {
                r.name: {
                    "allowed": r.allowed,
                    "limit": r.limit,
                    "remaining": r.remaining,
                    "reset": r.reset,
                    "source": r.source,
                }
                for r in self.results
            },
        }
