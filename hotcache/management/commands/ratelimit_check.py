"""manage.py ratelimit_check: drive one rule past its limit against the configured Redis and print what happened
(``hotcache.ratelimit.selfcheck.drive_rule``; non-zero exit when behaviour is wrong or Redis is unreachable)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from hotcache.ratelimit.selfcheck import CannotDrive, drive_rule


class Command(BaseCommand):
    help = "Drive a rate limit rule past its limit against the configured Redis and report what was seen."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rule", help="name of a rule in HOTCACHE['RATELIMIT_RULES'] (default: the first)")
        parser.add_argument("--rate", help="a rate to test instead of a configured rule (default 5/10s)")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = drive_rule(options.get("rule"), options.get("rate"))
        except CannotDrive as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            note = f" ({report.note})" if report.note else ""
            self.stdout.write(f"rule {report.rule}: {report.limit} per {report.window}s against {report.redis}{note}")
            for r in report.requests:
                verdict = "allowed" if r["allowed"] else f"DENIED  retry-after {r['retry_after']}s"
                self.stdout.write(f"  #{r['n']:<4} {verdict:<28} remaining={r['remaining']} reset={r['reset_s']}s")
            self.stdout.write(f"admitted {report.admitted}, denied {report.denied}; counter TTLs {report.ttl_ms} ms")
        if report.problems:
            raise CommandError("rate limiting misbehaved: " + "; ".join(report.problems))
        if not options["json"]:
            self.stdout.write(self.style.SUCCESS("OK: exactly the limit was admitted; refusals were not counted"))
