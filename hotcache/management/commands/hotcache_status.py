"""manage.py hotcache_status: the usage report in the terminal; non-zero exit when a budget or limit is exceeded."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from hotcache import reports


class Command(BaseCommand):
    help = (
        "hotcache usage: Redis commands today and per day against REDIS_DAILY_COMMAND_BUDGET, per feature; Redis "
        "memory; MongoDB connections; health gate and fallbacks. Exits 1 when a budget or limit is exceeded."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument("--days", type=int, default=None, help="days to show (default HOTCACHE['REPORTS_DAYS'])")

    def handle(self, *args: Any, **options: Any) -> None:
        ov = reports.overview(options["days"])
        if options["json"]:
            self.stdout.write(json.dumps(ov.as_dict(), indent=2))
        else:
            self._text(ov)
        if ov.exceeded:
            raise CommandError("hotcache limit exceeded: " + "; ".join(lim.message() for lim in ov.exceeded))

    def _text(self, ov: reports.Overview) -> None:
        w = self.stdout.write
        if not ov.redis_available:
            w(f"!! {ov.redis_note} Health gate: {ov.gate.state}. Run hotcache_check.")
        for lim in ov.limits:
            value = "unknown" if lim.value is None else f"{lim.value:,}"
            pct = "" if lim.percent is None else f"  {lim.percent}%"
            flag = {"exceeded": "  EXCEEDED", "warning": "  WARNING"}.get(lim.level, "")
            w(f"{lim.name:<30} {value:>14} of {lim.limit:,}{pct}{flag}  (HOTCACHE[{lim.setting!r}])")
            if lim.note:
                w(f"{'':<30} {lim.note}")
        w(
            f"{'Health gate':<30} {ov.gate.state}; fallback events today {sum(ov.fallbacks_today.values())}, "
            f"last {len(ov.days)} days {sum(ov.fallbacks.values())}"
        )
        w("")
        w(f"{'Feature':<20} {'enabled':>7} {'cmds today':>11} {'cmds':>9} {'RT':>9} {'mongo':>7} {'fallbacks':>9}")
        for f in ov.features:
            enabled = ("yes" if f.enabled else "no") if f.shipped else "-"
            w(
                f"{f.feature:<20} {enabled:>7} {f.commands_today:>11,} {f.commands:>9,} {f.round_trips:>9,} "
                f"{f.mongo_ops:>7,} {f.fallbacks:>9,}"
            )
        w("")
        w("Redis commands per day (UTC):")
        for d in ov.days:
            if d.commands:
                w(f"  {d.day.isoformat()} {d.commands:>9,}")
        for warning in ov.warnings:
            w(f"warning: {warning}")
