"""manage.py hotcache_status: the usage report in the terminal; non-zero exit when a budget or limit is exceeded."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from hotcache.reports import status_report


class Command(BaseCommand):
    help = (
        "hotcache usage: Redis billed commands (and round trips) today and per day against "
        "REDIS_DAILY_COMMAND_BUDGET, the UTC month projected from the days so far against "
        "REDIS_MONTHLY_COMMAND_BUDGET, per feature; Redis memory; MongoDB connections; health gate and "
        "fallbacks. Exits 1 when today is over the daily budget, the projection over the monthly one, or a "
        "limit is exceeded."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument("--days", type=int, default=None, help="days to show (default HOTCACHE['REPORTS_DAYS'])")

    def handle(self, *args: Any, **options: Any) -> None:
        report = status_report(options["days"], as_json=options["json"])
        for line in report.lines:
            self.stdout.write(line)
        if report.error:
            raise CommandError(report.error)
