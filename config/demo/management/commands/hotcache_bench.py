"""manage.py hotcache_bench: latency, Redis billed commands, commands sent and round trips per operation, arms
interleaved."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
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
        "latency p50/p99 (µs), spread of round medians, and Redis billed commands / commands sent / round trips / "
        "MongoDB operations per operation. Writes only under its own key prefix 'hcbench-<pid>' and deletes it "
        "afterwards."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "features",
            nargs="*",
            help=f"features to run (default all): {', '.join(all_groups())}; "
            "or 'connections' (MongoDB connections and operations per request, all on MongoDB "
            "vs on Redis, worker processes against a real MongoDB server)",
        )
        parser.add_argument("--redis-url", help="run against this Redis instead of the configured alias")
        parser.add_argument("--rounds", type=int, default=5)
        parser.add_argument("--ops", type=int, default=200, help="operations per arm per round")
        parser.add_argument("--json", action="store_true")
        conn = parser.add_argument_group("connections (the MongoDB connections benchmark, several processes)")
        conn.add_argument(
            "--mongo-url",
            help="a real MongoDB server (default: MONGO_URL if mongodb://, else a "
            "SecantusDB started for the run from the test requirements)",
        )
        conn.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
        conn.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
        conn.add_argument("--requests", type=int, default=2000, help="requests per arm (default 2000)")

    def handle(self, *args: Any, **options: Any) -> None:
        if "connections" in options["features"]:
            if options["features"] != ["connections"]:
                raise CommandError("run 'connections' on its own (it drives worker processes, not arms)")
            self._connections(options)
            return
        groups = all_groups()
        selected = options["features"] or list(groups)
        unknown = [f for f in selected if f not in groups]
        if unknown:
            raise CommandError(f"unknown feature(s) {unknown}; choose from {list(groups)}")
        caches = dict(settings.CACHES)
        hot = {**hotcache_settings.user_settings, "KEY_PREFIX": BENCH_PREFIX, "MONGO_DATABASE": "hotcache_bench"}
        if options["redis_url"] and hotcache_settings.REDIS_URL:
            hot["REDIS_URL"] = options["redis_url"]  # hotcache's own Redis (a cluster node with REDIS_CLUSTER)
        elif options["redis_url"]:
            alias = hotcache_settings.REDIS_ALIAS
            caches[alias] = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": options["redis_url"]}
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

    def _connections(self, options: dict[str, Any]) -> None:
        from config.demo.bench.connections import format_table, run_connections

        if min(options["workers"], options["threads"], options["requests"]) < 1:
            raise CommandError("--workers, --threads and --requests must be at least 1")
        caches = dict(settings.CACHES)
        if options["redis_url"]:
            alias = hotcache_settings.REDIS_ALIAS
            caches[alias] = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": options["redis_url"]}
        with _mongo_server(options["mongo_url"], self.stderr.write) as url:
            hot = {**hotcache_settings.user_settings, "MONGO_URL": url}
            with override_settings(CACHES=caches, HOTCACHE=hot):
                try:
                    results = run_connections(
                        workers=options["workers"],
                        threads=options["threads"],
                        requests=options["requests"],
                        progress=self.stderr.write,
                    )
                except ValueError as exc:
                    raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps([r.as_dict() for r in results], indent=2))
        else:
            self.stdout.write(format_table(results))


@contextlib.contextmanager
def _mongo_server(url: str | None, say: Any) -> Iterator[str]:
    """The MongoDB server to measure: --mongo-url, else MONGO_URL if it is a server, else a SecantusDB
    started for this run (tests/support/secantus.py; it comes with requirements/test.txt)."""
    configured = str(hotcache_settings.MONGO_URL or "")
    if url or configured.startswith(("mongodb://", "mongodb+srv://")):
        yield url or configured
        return
    try:
        from tests.support.secantus import SecantusServer, SecantusStartError
    except ImportError as exc:
        raise CommandError("the connections benchmark needs a real MongoDB server: pass --mongo-url") from exc
    try:
        server = SecantusServer(test_commands=False).start()
    except SecantusStartError as exc:
        raise CommandError(f"no MongoDB server for the benchmark: {exc}") from exc
    say(f"started SecantusDB for this run at {server.url}")
    try:
        yield server.url
    finally:
        server.close()


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
    head = (
        f"{'arm':<58} {'p50 µs':>9} {'p99 µs':>9} {'spread':>8} {'billed/op':>9} {'cmds/op':>8} {'RT/op':>6} "
        f"{'mongo/op':>8}"
    )
    lines = [f"\n== {title}", head, "-" * len(head)]
    for r in results:
        extra = "  " + " ".join(f"{k}={v}" for k, v in r.extra_per_op.items()) if r.extra_per_op else ""
        lines.append(
            f"{r.name:<58} {r.p50_us:>9} {r.p99_us:>9} {r.spread_us:>8} {r.redis_billed_per_op:>9} "
            f"{r.redis_commands_per_op:>8} "
            f"{r.redis_round_trips_per_op:>6} {r.mongo_ops_per_op:>8}{extra}"
        )
    return "\n".join(lines)
