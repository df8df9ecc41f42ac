"""manage.py ratelimit_check: drive one rule past its limit against the configured Redis and print what happened.

The background document's ``test-redis-rate-limit`` script, as a command: a throwaway identifier makes
limit + 3 requests through the real code path (one EVALSHA each); the command checks that exactly
``limit`` were admitted, that every refusal carries a Retry-After >= 1, that refusals did not count,
and that both counters have a TTL; then it deletes its keys. Exit status is non-zero when behaviour
is wrong or Redis is unreachable (outage policies are not applied here: this checks Redis itself).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from hotcache import ratelimit as rl
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import RedisUnavailable

_MAX_DRIVE = 1000


class Command(BaseCommand):
    help = "Drive a rate limit rule past its limit against the configured Redis and report what was seen."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rule", help="name of a rule in HOTCACHE['RATELIMIT_RULES'] (default: the first)")
        parser.add_argument("--rate", help="a rate to test instead of a configured rule (default 5/10s)")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        name, rate = self._pick(options.get("rule"), options.get("rate"))
        try:
            limit, window = rl.parse_rate(rate)
        except rl.InvalidRate as exc:
            raise CommandError(str(exc)) from exc
        note = ""
        if limit > _MAX_DRIVE:
            note = f"limit {limit} scaled down to {_MAX_DRIVE} (same window) to keep the check short"
            limit = _MAX_DRIVE
        if limit < 1:
            raise CommandError(f"rate {rate!r} admits nothing; nothing to drive")
        try:
            lim = rl.Limit(f"ratelimit_check.{name}", f"check-{uuid.uuid4().hex}", limit, window)
        except ValueError as exc:  # a rule name `manage.py check` reports (E012)
            raise CommandError(f"rule {name[:80]!r} cannot be driven: {exc}") from exc
        rl.reset_local_state()
        redis_backend.reset()  # try Redis now, not a cached "down" verdict
        location = settings.CACHES.get(hotcache_settings.REDIS_ALIAS, {}).get("LOCATION", "?")
        rows: list[dict[str, Any]] = []
        problems: list[str] = []
        try:
            for i in range(limit + 3):
                rl.reset_local_state()  # ask Redis every time (the deny cache would answer locally)
                res = rl.evaluate([lim], raise_unavailable=True).results[0]
                retry = None if res.allowed else res.retry_after
                rows.append({"n": i + 1, "allowed": res.allowed, "remaining": res.remaining,
                             "reset_s": round(res.reset, 3), "retry_after": retry})
            peek = rl.evaluate([lim], increment=False, raise_unavailable=True).results[0]
            keys = rl.limit_keys(lim)
            ttls = redis_backend.call("ratelimit", lambda r: [r.pttl(k) for k in keys])
            redis_backend.call("ratelimit", lambda r: r.delete(*keys))
        except RedisUnavailable as exc:
            raise CommandError(
                f"Redis at {location} is unreachable ({exc}); set CACHES[{hotcache_settings.REDIS_ALIAS!r}] "
                "(the alias named by HOTCACHE['REDIS_ALIAS'])"
            ) from exc
        finally:
            rl.reset_local_state()
        admitted = sum(1 for r in rows if r["allowed"])
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
        report = {"rule": name, "rate": rate, "limit": limit, "window_s": window, "redis": str(location),
                  "admitted": admitted, "denied": len(rows) - admitted, "ttl_ms": ttls, "note": note,
                  "requests": rows, "ok": not problems, "problems": problems}
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self.stdout.write(f"rule {name}: {limit} per {window}s against {location}" + (f" ({note})" if note else ""))
            for r in rows:
                verdict = "allowed" if r["allowed"] else f"DENIED  retry-after {r['retry_after']}s"
                self.stdout.write(f"  #{r['n']:<4} {verdict:<28} remaining={r['remaining']} reset={r['reset_s']}s")
            self.stdout.write(f"admitted {admitted}, denied {len(rows) - admitted}; counter TTLs {ttls} ms")
        if problems:
            raise CommandError("rate limiting misbehaved: " + "; ".join(problems))
        if not options["json"]:
            self.stdout.write(self.style.SUCCESS("OK: exactly the limit was admitted; refusals were not counted"))

    @staticmethod
    def _pick(rule: str | None, rate: str | None) -> tuple[str, str]:
        if rate:
            return "adhoc", rate
        rules = hotcache_settings.RATELIMIT_RULES or []
        if rule:
            for r in rules:
                if isinstance(r, dict) and r.get("name") == rule:
                    return rule, r.get("rate", "")
            raise CommandError(f"no rule named {rule!r} in HOTCACHE['RATELIMIT_RULES']")
        for r in rules:
            if isinstance(r, dict) and r.get("name") and r.get("rate"):
                return str(r["name"]), str(r["rate"])
        return "adhoc", "5/10s"
