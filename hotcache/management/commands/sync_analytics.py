"""manage.py sync_analytics: move analytics counters from Redis to MongoDB exactly once (same code as the beat task)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from hotcache import analytics
from hotcache.management.durable import DurableWriteCommand


class Command(DurableWriteCommand):
    help = (
        "Move closed hours of analytics counters (and batches left pending by earlier runs) from Redis into "
        "MongoDB analytics_hourly, and distinct visitors into analytics_visitors. Safe to run at any time, "
        "also next to the beat task: every batch is applied once. Exit status 0 when the run finished (or another "
        "sync held the lock), 1 when Redis or MongoDB stopped it (rerun later: nothing is lost)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="show what would move; change nothing")
        parser.add_argument(
            "--include-current-hour",
            action="store_true",
            help="also move the hour in progress (new events start a fresh counter)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["dry_run"]:
            self.require_shared_store("sync_analytics", "the counters it moves out of Redis (deleted there once moved)")
        several = False

        def progress(done: int, total: int) -> None:
            nonlocal several
            several = several or done < total  # a backlog of several bulk writes: show each one
            if several:
                self.stdout.write(f"  {done}/{total} counters written")

        result = analytics.sync(
            include_current_hour=options["include_current_hour"], dry_run=options["dry_run"], progress=progress
        )
        if result.locked_out:
            self.stdout.write("Another sync is running (lock held); nothing done. Its batches are applied once.")
            return
        if result.tampered:
            self.stdout.write(
                f"{result.tampered} Redis record(s) refused as tampered (not written by hotcache; logged, "
                "counted as analytics:tampered, never applied)."
            )
        if result.error and not (result.counters or result.batches or result.visitor_counts):
            raise CommandError(result.why_stopped())  # nothing moved: the outage is the whole story
        verb = "Would move" if result.dry_run else "Moved"
        self.stdout.write(
            f"{verb} {result.counters} counters ({result.events} events) from {result.batches} batch(es): "
            f"{result.hours_claimed} hour(s) claimed now, {result.recovered} left pending by an earlier run."
        )
        if not result.dry_run:
            self.stdout.write(
                f"MongoDB: {result.mongo_round_trips} bulk round trip(s), {result.applied} counters applied, "
                f"{result.counters - result.applied} already applied (replays skipped)."
            )
        self.stdout.write(
            f"Distinct visitors: {result.visitor_counts} (event, day) count(s); "
            f"{result.days_closed} closed day(s) removed from Redis."
        )
        if result.error:
            raise CommandError(result.why_stopped())
