"""manage.py hotcache_demo: drive realistic traffic through the real stack and report what hotcache did."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.demo.report import format_report
from config.demo.runner import run_demo
from config.demo.scenarios import all_scenarios


class Command(BaseCommand):
    help = (
        "Run the hotcache demo: many users, IPs and API keys through Django's WSGI handler, then the syncs, "
        "then a report (Redis commands against the daily budget, MongoDB operations, what each feature did). "
        "Writes only under key prefix 'hcdemo' and MongoDB database 'hotcache_demo'."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--requests", type=int, default=2000, help="number of HTTP requests (default 2000)")
        parser.add_argument("--seed", type=int, default=1, help="random seed for the traffic mix")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        n = options["requests"]
        if n < 1:
            raise CommandError("--requests must be at least 1")
        _require_auth_tables()

        def progress(done: int, total: int) -> None:
            self.stderr.write(f"  {done}/{total} requests", ending="\r" if done < total else "\n")

        result = run_demo(all_scenarios(), requests=n, seed=options["seed"], progress=progress)
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict(), indent=2, default=str))
        else:
            self.stdout.write(format_report(result))


def _require_auth_tables() -> None:
    from django.db import connection

    if "auth_user" not in connection.introspection.table_names():
        raise CommandError("The database has no tables yet: run 'python manage.py migrate' first.")
