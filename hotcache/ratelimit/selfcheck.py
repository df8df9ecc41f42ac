"""``drive_rule``: one rule driven past its limit against the configured Redis, and what was seen
(the service behind ``manage.py ratelimit_check``).

A throwaway identifier makes limit + 3 requests through the real code path (one EVALSHA each); the report says
whether exactly ``limit`` were admitted, every refusal carried a Retry-After >= 1, refusals did not count and the
counters have a TTL; the keys are deleted afterwards. Outage policies are not applied: this checks Redis itself.
See docs/ratelimit.md.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import HotcacheError, RedisUnavailable
from hotcache.ratelimit.core import evaluate, limit_keys
from hotcache.ratelimit.limits import Limit
from hotcache.ratelimit.rates import InvalidRate, parse_rate
from hotcache.ratelimit.state import reset_local_state

__all__ = ["MAX_DRIVE", "CannotDrive", "DriveReport", "drive_rule"]

MAX_DRIVE = 1000  # a larger limit is scaled down to this (same window) to keep the check short


class CannotDrive(HotcacheError):
    """The rule cannot be driven: no such rule, a rate that does not parse or admits nothing, Redis unreachable."""


@dataclass(frozen=True, slots=True)
class DriveReport:
    """What driving one rule showed; ``problems`` is empty when Redis behaved."""

    rule: str
    rate: str
    limit: int
    window: int
    redis: str
    admitted: int
    ttl_ms: list[int]
    note: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def denied(self) -> int:
        return len(self.requests) - self.admitted

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "rate": self.rate, "limit": self.limit, "window_s": self.window,
                "redis": self.redis, "admitted": self.admitted, "denied": self.denied, "ttl_ms": self.ttl_ms,
                "note": self.note, "requests": self.requests, "ok": self.ok, "problems": self.problems}


def _pick(rule: str | None, rate: str | None) -> tuple[str, str]:
    if rate:
        return "adhoc", rate
    rules = hotcache_settings.RATELIMIT_RULES or []
    if rule:
        for r in rules:
            if isinstance(r, dict) and r.get("name") == rule:
                return rule, r.get("rate", "")
        raise CannotDrive(f"no rule named {rule!r} in HOTCACHE['RATELIMIT_RULES']")
    for r in rules:
        if isinstance(r, dict) and r.get("name") and r.get("rate"):
            return str(r["name"]), str(r["rate"])
    return "adhoc", "5/10s"


def drive_rule(rule: str | None = None, rate: str | None = None) -> DriveReport:
    """Drive ``rate``, else the rule named ``rule``, else the first configured rule (else ``5/10s``) past its limit."""
    name, rate = _pick(rule, rate)
    try:
        limit, window = parse_rate(rate)
    except InvalidRate as exc:
        raise CannotDrive(str(exc)) from exc
    note = ""
    if limit > MAX_DRIVE:
        note = f"limit {limit} scaled down to {MAX_DRIVE} (same window) to keep the check short"
        limit = MAX_DRIVE
    if limit < 1:
        raise CannotDrive(f"rate {rate!r} admits nothing; nothing to drive")
    try:
        lim = Limit(f"ratelimit_check.{name}", f"check-{uuid.uuid4().hex}", limit, window)
    except ValueError as exc:  # a rule name `manage.py check` reports (E012)
        raise CannotDrive(f"rule {name[:80]!r} cannot be driven: {exc}") from exc
    reset_local_state()
    redis_backend.reset()  # try Redis now, not a cached "down" verdict
    alias = hotcache_settings.REDIS_ALIAS
    if hotcache_settings.REDIS_URL:
        location, fix = "HOTCACHE['REDIS_URL']", "check HOTCACHE['REDIS_URL'] (and REDIS_CLUSTER)"
    else:
        location = settings.CACHES.get(alias, {}).get("LOCATION", "?")
        fix = f"set CACHES[{alias!r}] (the alias named by HOTCACHE['REDIS_ALIAS'])"
    rows: list[dict[str, Any]] = []
    try:
        for i in range(limit + 3):
            reset_local_state()  # ask Redis every time (the deny cache would answer locally)
            res = evaluate([lim], raise_unavailable=True).results[0]
            retry = None if res.allowed else res.retry_after
            rows.append({"n": i + 1, "allowed": res.allowed, "remaining": res.remaining,
                         "reset_s": round(res.reset, 3), "retry_after": retry})
        peek = evaluate([lim], increment=False, raise_unavailable=True).results[0]
        keys = limit_keys(lim)
        ttls = redis_backend.call("ratelimit", lambda r: [r.pttl(k) for k in keys])
        redis_backend.call("ratelimit", lambda r: r.delete(*keys))
    except RedisUnavailable as exc:
        raise CannotDrive(
            f"Redis at {location} is unreachable ({exc}); {fix}"
        ) from exc
    finally:
        reset_local_state()
    admitted = sum(1 for r in rows if r["allowed"])
    problems: list[str] = []
    if admitted != limit:
        problems.append(f"admitted {admitted} requests, expected exactly {limit}")
    if any(r["allowed"] for r in rows[limit:]):
        problems.append("a request past the limit was admitted")
    if any(not r["allowed"] and (r["retry_after"] or 0) < 1 for r in rows):
        problems.append("a refusal had no Retry-After >= 1")
    if peek.count - 1 > limit:
        problems.append(f"refused requests were counted (counter at {peek.count - 1}, limit {limit})")
    live = [t for t in ttls if t != -2]
    if not live or any(t <= 0 or t > 2 * window * 1000 for t in live):
        problems.append(f"counter TTLs wrong: {ttls} ms (expected 0 < ttl <= {2 * window * 1000})")
    return DriveReport(rule=name, rate=rate, limit=limit, window=window, redis=str(location), admitted=admitted,
                       ttl_ms=ttls, note=note, requests=rows, problems=problems)
