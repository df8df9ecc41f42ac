"""manage.py hotcache_bench: latency, Redis billed commands, commands sent and round trips per operation, arms
interleaved."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
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
        parser.add_argument(
            "--cluster",
            nargs="?",
            const="start",
            metavar="URL",
            help="run every selected group a second time with hotcache on a Redis Cluster (HOTCACHE REDIS_URL + "
            "REDIS_CLUSTER): this URL, or without one a 6-node cluster started on loopback for the run from the "
            "test requirements. The anchors (django-ratelimit, the floor, Django's cached_db) stay on the single"
            " server",
        )
        parser.add_argument(
            "--latency-ms",
            type=float,
            default=0.0,
            help="put a TCP relay adding this many ms each way in front of Redis and of the database (when it is "
            "a network server, e.g. PostgreSQL): what a deployment whose stores are not on loopback sees",
        )
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
        with contextlib.ExitStack() as stack:
            redis_url = options["redis_url"]
            if options["latency_ms"]:
                from config.demo.bench.latency import delayed

                try:
                    mode = stack.enter_context(
                        delayed(redis_url or _configured_redis_url(), options["latency_ms"], say=self.stderr.write)
                    )
                except (ValueError, RuntimeError) as exc:
                    raise CommandError(str(exc)) from exc
                redis_url = mode.redis_url
                if not options["json"]:
                    self.stdout.write(mode.describe())
            report = self._run_groups(selected, redis_url, options)
            if options["cluster"]:
                cluster_url = stack.enter_context(_cluster(options["cluster"], self.stderr.write))
                if not options["json"]:
                    self.stdout.write(f"\n== the same groups with hotcache on the Redis Cluster at {cluster_url}")
                for title, arms in self._run_groups(selected, redis_url, options, cluster_url=cluster_url).items():
                    report[f"{title} [cluster]"] = arms
            if options["latency_ms"]:
                report["latency_mode"] = {"delay_ms_each_way": options["latency_ms"], **mode.relays}
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))

    def _run_groups(
        self, selected: list[str], redis_url: str | None, options: dict[str, Any], *, cluster_url: str | None = None
    ) -> dict[str, Any]:
        groups = all_groups()
        caches = dict(settings.CACHES)
        hot = {**hotcache_settings.user_settings, "KEY_PREFIX": BENCH_PREFIX, "MONGO_DATABASE": "hotcache_bench"}
        if redis_url:
            alias = hotcache_settings.REDIS_ALIAS
            caches[alias] = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url}
            if hot.get("REDIS_URL"):
                hot["REDIS_URL"] = redis_url
        if cluster_url:
            hot.update(REDIS_URL=cluster_url, REDIS_CLUSTER=True)
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
                        ratios = _async_ratios(feature, title, results)
                        if ratios:
                            report[f"{title}: added p50, async / sync"] = ratios
                        if not options["json"]:
                            self.stdout.write(_format(title, results))
                            for arm, ratio in ratios.items():
                                self.stdout.write(f"  added p50 {arm} / its sync arm: {ratio}x")
            finally:
                _cleanup()
        return report

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
def _started(start: Callable[[], Any], failure: type[Exception], what: str, label: str, say: Any) -> Iterator[str]:
    """A server from the repository's tests/support started for this run (``start()``, which raises ``failure``
    when it cannot): its URL, said on stderr, and the server closed after the run."""
    try:
        server = start()
    except failure as exc:
        raise CommandError(f"no {what} for the benchmark: {exc}") from exc
    say(f"started {label} for this run at {server.url}")
    try:
        yield server.url
    finally:
        server.close()


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
    with _started(
        lambda: SecantusServer(test_commands=False).start(), SecantusStartError, "MongoDB server", "SecantusDB", say
    ) as started:
        yield started


@contextlib.contextmanager
def _cluster(url: str, say: Any) -> Iterator[str]:
    """The Redis Cluster of --cluster: its URL, or a 6-node cluster started for the run
    (tests/support/redis_cluster.py, Debian's redis-server) and stopped after it."""
    if url != "start":
        yield url
        return
    try:
        from tests.support.redis_cluster import ClusterStartError, RedisClusterNodes
    except ImportError as exc:
        raise CommandError("--cluster without a URL needs the repository's tests/support: pass --cluster URL") from exc
    with _started(
        lambda: RedisClusterNodes().start(), ClusterStartError, "Redis Cluster", "a 6-node Redis Cluster", say
    ) as started:
        yield started


def _configured_redis_url() -> str:
    """The Redis the arms use when no --redis-url is given: HOTCACHE['REDIS_URL'], else the alias's LOCATION."""
    url = hotcache_settings.REDIS_URL or settings.CACHES.get(hotcache_settings.REDIS_ALIAS, {}).get("LOCATION")
    if not isinstance(url, str):
        raise CommandError("--latency-ms needs a Redis URL: pass --redis-url")
    return url


def _async_ratios(feature: str, title: str, results: list[Any]) -> dict[str, float]:
    """The async group's added-latency ratios (config.demo.bench.aio.summary); {} for other groups."""
    if feature != "aio":
        return {}
    from config.demo.bench.aio import summary

    return summary(title, results)


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
