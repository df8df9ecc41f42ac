"""manage.py hotcache_bench: latency, Redis commands and round trips per operation, arms interleaved."""

from __future__ import annotations

import json
import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.test.utils import override_settings

from config.demo.bench.groups import all_groups
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import BackendUnavailable

# Per run, so two benchmarks on one Redis never read or delete each other's keys.
BENCH_PREFIX = f"hcbench-{os.getpid()}"


class Command(BaseCommand):
    help = (
        "Benchmark hotcache against its anchors. Arms of a group run interleaved in this process; reports "
        "latency p50/p99 (µs), spread of round medians, and Redis commands / round trips / MongoDB operations "
        "per operation. Writes only under its own key prefix 'hcbench-<pid>' and deletes it afterwards."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("features", nargs="*", help=f"features to run (default all): {', '.join(all_groups())}")
        parser.add_argument("--redis-url", help="run against this Redis instead of the configured alias")
        parser.add_argument("--rounds", type=int, default=5)
        parser.add_argument("--ops", type=int, default=200, help="operations per arm per round")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        groups = all_groups()
        selected = options["features"] or list(groups)
        unknown = [f for f in selected if f not in groups]
        if unknown:
            raise CommandError(f"unknown feature(s) {unknown}; choose from {list(groups)}")
        caches = dict(settings.CACHES)
        if options["redis_url"]:
            alias = hotcache_settings.REDIS_ALIAS
            caches[alias] = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": options["redis_url"]}
        hot = {**hotcache_settings.user_settings, "KEY_PREFIX": BENCH_PREFIX, "MONGO_DATABASE": "hotcache_bench"}
        report: dict[str, Any] = {}
        with override_settings(CACHES=caches, HOTCACHE=hot):
            try:
                redis_backend.call("bench", lambda r: r.ping())
            except BackendUnavailable as exc:
                raise CommandError(f"Redis is unreachable: {exc}") from exc
            try:
                from config.demo.bench.runner import run_group

                for feature in selected:
                    for title, arms in groups[feature]().items():
                        self.stderr.write(f"running {title} ...")
                        results = run_group(arms, rounds=options["rounds"], ops_per_round=options["ops"])
                        report[title] = [r.as_dict() for r in results]
                        if not options["json"]:
                            self.stdout.write(_format(title, results))
            finally:
                _cleanup()
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))


def _cleanup() -> None:
    def drop(r: Any) -> None:
        batch = []
        for key in r.scan_iter(match=f"{BENCH_PREFIX}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                r.unlink(*batch)
                batch = []
        if batch:
            r.unlink(*batch)

    try:
        redis_backend.call("bench", drop)
    except BackendUnavailable:
        pass


def _format(title: str, results: list[Any]) -> str:
    head = f"{'arm':<58} {'p50 µs':>9} {'p99 µs':>9} {'spread':>8} {'cmds/op':>8} {'RT/op':>6} {'mongo/op':>8}"
    lines = [f"\n== {title}", head, "-" * len(head)]
    for r in results:
        extra = "  " + " ".join(f"{k}={v}" for k, v in r.extra_per_op.items()) if r.extra_per_op else ""
        lines.append(
            f"{r.name:<58} {r.p50_us:>9} {r.p99_us:>9} {r.spread_us:>8} {r.redis_commands_per_op:>8} "
            f"{r.redis_round_trips_per_op:>6} {r.mongo_ops_per_op:>8}{extra}"
        )
    return "\n".join(lines)
