"""manage.py sync_apikey_usage: copy API keys' daily Redis counters into MongoDB (same service as the beat task)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from django.core.management.base import CommandError, CommandParser

from hotcache import apikeys
from hotcache.management.durable import DurableWriteCommand


class Command(DurableWriteCommand):
    help = (
        "Copy API keys' per-day usage counters of the last --days UTC days from Redis into MongoDB's usage history "
        "(the same service as the beat task hotcache.tasks.sync_apikey_usage; run it every 10 minutes from cron "
        "without Celery). Idempotent: safe to rerun and to overlap. Exit status 1 when Redis or MongoDB stopped it "
        "(nothing is lost: rerun later)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days", type=int, default=2, help="UTC days to copy, today included (default 2; more after an outage)"
        )
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        self.require_shared_store("sync_apikey_usage", "the usage history it writes")
        try:
            result = apikeys.sync_usage(days=options["days"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps(dataclasses.asdict(result), indent=2))
        elif not result.error:
            self.stdout.write(
                f"Copied {result.written} (key, day) total(s) of {result.keys} key(s) over {result.days} day(s) into "
                f"MongoDB; {result.bases_pushed} MongoDB-counted total(s) pushed back into Redis."
            )
        if result.error:
            raise CommandError(result.why_stopped())
