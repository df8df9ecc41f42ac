"""manage.py sync_apikey_usage: copy API keys' daily Redis counters into MongoDB's usage history now (cron)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from hotcache import apikeys
from hotcache.exceptions import MongoUnavailable
from hotcache.management.durable import DurableWriteCommand


class Command(DurableWriteCommand):
    help = (
        "Copy the per-day use counters of the API keys used in the last DAYS UTC days from Redis into MongoDB "
        "api_key_usage (the same service as the beat task hotcache.tasks.sync_apikey_usage; idempotent, safe "
        "to run twice or next to the task). Exit status 1 when Redis or MongoDB stopped it (rerun later)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days", type=int, default=2, help="UTC days to copy, today included (default 2; more after an outage)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.require_shared_store("sync_apikey_usage", "the usage history it writes")
        try:
            result = apikeys.sync_usage(days=options["days"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except MongoUnavailable as exc:
            raise CommandError(f"sync stopped: MongoDB unavailable ({exc}); rerun later, nothing is lost") from exc
        if not result.redis_available:
            msg = "sync skipped: Redis unavailable; the counters stay in Redis and the next run copies them"
            raise CommandError(msg)
        self.stdout.write(
            f"Copied {result.written} (key, day) total(s) of {result.keys} key(s) over {result.days} day(s) "
            f"into MongoDB; {result.bases_pushed} MongoDB-counted total(s) pushed back into Redis."
        )
