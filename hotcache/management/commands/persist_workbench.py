"""manage.py persist_workbench: move ended and abandoned workbench sessions into MongoDB history now."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandError, CommandParser

from hotcache import workbench
from hotcache.management.durable import DurableWriteCommand


class Command(DurableWriteCommand):
    help = (
        "Move ended workbench sessions, and sessions idle past WORKBENCH_PERSIST_IDLE_AFTER, into MongoDB "
        "history (the same service as the beat task hotcache.tasks.persist_workbench_sessions)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="only count what a run would move")
        parser.add_argument("--limit", type=int, default=None, help="handle at most this many sessions")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["dry_run"]:
            self.require_shared_store(
                "persist_workbench", "the sessions it moves into history (removed from Redis once moved)"
            )
        result = workbench.persist(dry_run=options["dry_run"], limit=options["limit"])
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict(), indent=2))
        elif result.dry_run:
            pending = ", ".join(f"{k} {v}" for k, v in result.pending.items())
            self.stdout.write(f"Would move: {pending}")
        else:
            self.stdout.write(
                f"Moved {result.persisted} session(s) to history: {result.ended} ended, {result.idle} abandoned, "
                f"{result.from_fallback} from the MongoDB fallback; {result.already} already there, "
                f"{result.kept} in use again (kept hot), {result.missing} gone, {result.recovered} stale claim(s) "
                f"recovered; {result.batches} MongoDB bulk write(s)."
            )
        if result.errors:
            raise CommandError(result.why_stopped())
