"""``hotcache_bench connections``: the seed's headline, measured on a real MongoDB server.

The demo's mixed load (config/demo/scenarios.py, through Django's WSGI handler and the real middleware
stack) runs in several worker processes with several threads each, once per arm:

* ``hotcache on Redis``: the defaults (``WORKBENCH_DURABLE_SAVES=True``);
* ``hotcache on Redis, durable saves off``: ``WORKBENCH_DURABLE_SAVES=False``;
* ``hotcache on Redis, no healthy limit``: ``MONGO_HEALTHY_POOL_SIZE=0`` (each process's pool grows to as many
  connections as its threads had MongoDB calls in flight at once: the behaviour before the healthy lane);
* ``all on MongoDB``: Redis unreachable (a closed port) in every worker: every feature on its MongoDB
  fallback, the seed's "before" (run last, shown first).

Per arm it reports, from the server's own ``serverStatus.connections`` (sampled every 20 ms while the
workers run, minus what was open before they started), the peak of connections open and how many were
opened, plus the MongoDB operations per request hotcache sent on the request path (exact, from its meters,
per feature), and which call sites opened the workers' pooled connections (pymongo's connection_created
events, ``mongo.connection_origins()``; the rest of the connections opened are the monitors, one per process
with "poll"). Scenario state is set up once and copied into each worker by fork; each worker draws its own
traffic (its own seed and workbench session ids).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.db import connections as db_connections
from django.test import RequestFactory
from django.test.utils import override_settings

from config.demo.runner import DemoContext, Scenario, _middleware, _send, prepared_context
from config.demo.scenarios import all_scenarios
from hotcache import metering
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import BackendUnavailable
from hotcache.testing import reset

__all__ = ["ArmResult", "format_table", "run_connections"]

DATABASE = "hotcache_connections_demo"  # dropped before each arm (only *_demo databases may be dropped)
BEFORE = "all on MongoDB (Redis unavailable)"
# Run in this order, "before" last: a process that saw a Redis outage keeps asking MongoDB on MFA misses
# for MFA_CODE_TTL (mfa's outage marker, by design), which would bill the next arm for the first one.
ARMS: dict[str, dict[str, Any]] = {
    "hotcache on Redis (defaults)": {"redis": True, "hotcache": {}},
    "hotcache on Redis, WORKBENCH_DURABLE_SAVES=False": {"redis": True, "hotcache": {"WORKBENCH_DURABLE_SAVES": False}},
    "hotcache on Redis, MONGO_HEALTHY_POOL_SIZE=0 (no healthy limit)": {
        "redis": True, "hotcache": {"MONGO_HEALTHY_POOL_SIZE": 0}},
    BEFORE: {"redis": False, "hotcache": {}},
}
# Scenarios whose load never reaches MongoDB in the demo (cached users live in Django's SQLite, and their
# setup rewrites users that concurrent workers would share): left out, so SQLite writes do not skew the arms.
_SKIPPED = ("users",)


@dataclass(slots=True)
class ArmResult:
    name: str
    requests: int
    seconds: float
    workers: int
    threads: int
    peak_connections: int  # serverStatus.connections.current at its peak, minus the count before the workers
    opened_connections: int  # serverStatus.connections.totalCreated during the arm
    mongo_ops: int
    mongo_by_feature: dict[str, int]
    redis_commands: int
    fallbacks: int  # fallback events (a feature served from MongoDB or in-process because Redis failed)
    pool_peaks: list[int] = field(default_factory=list)  # each worker's pymongo pool: most connections open
    origins: dict[str, int] = field(default_factory=dict)  # call site -> pooled connections opened (all workers)
    lane_waits: int = 0  # MongoDB calls that waited for the healthy lane (MONGO_HEALTHY_POOL_SIZE)
    lane_overflows: int = 0  # of those, calls that went ahead on the full pool after MONGO_HEALTHY_WAIT_MS
    lane_refusals: int = 0  # of those, calls failed with MONGO_HEALTHY_MAX_OVERFLOW overflows in flight
    lane_wait_ms: int = 0  # time those calls waited, in all (noisy: a latency)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def mongo_ops_per_request(self) -> float:
        return self.mongo_ops / max(1, self.requests)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mongo_ops_per_request": round(self.mongo_ops_per_request, 4)}


class _Sampler:
    """Polls serverStatus.connections from this process until stopped; keeps the peak of ``current``."""

    def __init__(self) -> None:
        self.peak = 0
        self.created_last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> dict[str, int]:
        status = mongo.server_status_connections()
        if not status or "current" not in status:
            msg = "the MongoDB server does not report serverStatus.connections (needed for this benchmark)"
            raise RuntimeError(msg)
        return status

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                status = self.read()
            except (BackendUnavailable, RuntimeError):
                continue
            self.peak = max(self.peak, status["current"])
            self.created_last = status.get("totalCreated", 0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _settled(sampler: _Sampler) -> dict[str, int]:
    """serverStatus.connections once this process's own connections (pool and monitors) are all open."""
    last = sampler.read()
    for _ in range(40):
        time.sleep(0.05)  # the driver's monitor connections open in the background
        now = sampler.read()
        if now["current"] == last["current"]:
            return now
        last = now
    return last


def _drop_keys(prefix: str) -> None:
    """Delete the arm's own Redis keys (and nothing else)."""

    def drop(r: Any) -> None:
        batch = [k for k in r.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(batch), 500):
            r.unlink(*batch[i : i + 500])

    try:
        redis_backend.call("bench", drop)
    except BackendUnavailable:
        pass


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _worker(
    index: int, scenarios: list[Scenario], ctx: DemoContext, requests: int, threads: int, seed: int, conn: Any
) -> None:
    """One worker process: ``threads`` threads send ``requests`` requests in all; sends back its figures."""
    try:
        logging.getLogger("django.request").setLevel(logging.ERROR)  # 4xx are part of the mix, not news
        ctx.rng = random.Random(seed * 1000 + index)
        wb = ctx.data.get("workbench")
        if wb is not None:  # its own session ids (wb-<n>): workers must not create each other's sessions
            from config.demo.workbench import _data

            _data(ctx)["opened"] = (index + 1) * 1_000_000
        handler, factory = WSGIHandler(), RequestFactory()
        weights = [sc.weight for sc in scenarios]
        periodic = [sc for sc in scenarios if sc.every]
        lock = threading.Lock()
        counter = iter(range(requests))
        statuses: Counter[int] = Counter()
        errors: list[str] = []

        def loop() -> None:
            while True:
                with lock:
                    i = next(counter, None)
                    if i is None:
                        return
                    due = [p for p in periodic if (i + 1) % p.every == 0]  # type: ignore[operator]
                    sc = due[0] if due else ctx.rng.choices(scenarios, weights=weights)[0]
                    req = sc.make_request(ctx, i)
                    req.scenario = sc.name
                try:
                    resp = _send(handler, factory, req)
                except Exception as exc:
                    errors.append(f"{sc.name}: {type(exc).__name__}: {exc}")
                    continue
                with lock:
                    statuses[resp.status] += 1
                    if sc.on_response:
                        sc.on_response(ctx, req, resp)

        before = metering.snapshot()
        pool = [threading.Thread(target=loop) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        # What the process still owes MongoDB (workbench durable copies) is written, as at its exit, and counted.
        from hotcache import workbench

        workbench.flush_durable()
        delta = metering.snapshot()
        delta.subtract(before)
        db_connections.close_all()
        pool = mongo.local_pool_stats()
        conn.send(("ok", {"statuses": dict(statuses), "meters": {k: v for k, v in delta.items() if v},
                          "pool_peak": pool.peak_open if pool else 0, "errors": errors[:5],
                          "origins": mongo.connection_origins(),
                          "lane": [pool.lane_waits, pool.lane_overflows, pool.lane_wait_ms, pool.lane_refusals]
                                   if pool else [0, 0, 0, 0]}))
    except BaseException as exc:  # reported to the parent, which fails the run
        conn.send(("error", f"worker {index}: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _run_arm(
    name: str, spec: dict[str, Any], *, workers: int, threads: int, requests: int, seed: int
) -> ArmResult:
    scenarios = [sc for sc in all_scenarios() if sc.name not in _SKIPPED]
    hot = dict(hotcache_settings.user_settings)
    for sc in scenarios:
        hot.update(sc.settings)
    prefix = f"hcconn-{int(time.time() * 1000)}"
    # Generous Redis timeouts: dozens of threads on a small machine can stall a reply past the 50 ms
    # default, and the health gate would then send the Redis arms to MongoDB (the fallbacks column shows it).
    hot.update(REDIS_SOCKET_TIMEOUT=1.0, REDIS_CONNECT_TIMEOUT=1.0)
    hot.update(spec["hotcache"], KEY_PREFIX=prefix, MONGO_DATABASE=DATABASE)
    caches = dict(settings.CACHES)
    if not spec["redis"]:
        alias = hot.get("REDIS_ALIAS", "default")
        caches[alias] = {**caches[alias], "LOCATION": f"redis://127.0.0.1:{_closed_port()}/0"}
    with override_settings(HOTCACHE=hot, CACHES=caches, MIDDLEWARE=_middleware(scenarios),
                           ROOT_URLCONF="config.demo.urls"):
        reset()
        mongo.drop_demo_database(DATABASE)
        ctx = prepared_context(scenarios, requests=requests, seed=seed)
        sampler = _Sampler()
        baseline = _settled(sampler)  # this process's own client (and its monitors) are open from here on
        db_connections.close_all()  # no SQLite connection crosses the fork
        fork = multiprocessing.get_context("fork")
        pipes = [fork.Pipe(duplex=False) for _ in range(workers)]
        share = [requests // workers + (1 if i < requests % workers else 0) for i in range(workers)]
        procs = [
            fork.Process(target=_worker, args=(i, scenarios, ctx, share[i], threads, seed, send), daemon=True)
            for i, (_, send) in enumerate(pipes)
        ]
        sampler.start()
        started = time.perf_counter()
        for p in procs:
            p.start()
        results = []
        for (recv, send), p in zip(pipes, procs, strict=True):
            send.close()
            status, value = recv.recv() if recv.poll(600) else ("error", "worker did not finish in 600 s")
            p.join(30)
            if status != "ok":
                raise RuntimeError(value)
            results.append(value)
        seconds = time.perf_counter() - started
        sampler.stop()
        after = sampler.read()
        reset()
    _drop_keys(prefix)
    meters: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    origins: Counter[str] = Counter()
    for r in results:
        meters.update(r["meters"])
        origins.update(r["origins"])
        statuses.update({int(k): v for k, v in r["statuses"].items()})
    by_feature = {k[6:]: v for k, v in sorted(meters.items()) if k.startswith("mongo:") and v}
    return ArmResult(
        name=name,
        requests=sum(statuses.values()),
        seconds=round(seconds, 2),
        workers=workers,
        threads=threads,
        peak_connections=max(sampler.peak, after["current"]) - baseline["current"],
        opened_connections=after.get("totalCreated", 0) - baseline.get("totalCreated", 0),
        mongo_ops=sum(by_feature.values()),
        mongo_by_feature=by_feature,
        redis_commands=sum(v for k, v in meters.items() if k.startswith("cmd:") and not k.endswith(":meter")),
        fallbacks=sum(v for k, v in meters.items() if k.startswith("ev:") and k.endswith(":fallback")),
        pool_peaks=[r["pool_peak"] for r in results],
        origins=dict(origins.most_common()),
        lane_waits=sum(r["lane"][0] for r in results),
        lane_overflows=sum(r["lane"][1] for r in results),
        lane_wait_ms=sum(r["lane"][2] for r in results),
        lane_refusals=sum(r["lane"][3] for r in results),
        statuses=dict(sorted(statuses.items())),
    )


def run_connections(
    *,
    workers: int = 4,
    threads: int = 4,
    requests: int = 2000,
    seed: int = 1,
    arms: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[ArmResult]:
    """Run the arms against hotcache's configured MongoDB (a real server) and Redis; returns one result each."""
    if mongo.url_scheme(hotcache_settings.MONGO_URL) not in ("mongodb", "mongodb+srv"):
        msg = "the connections benchmark needs a real MongoDB server (HOTCACHE['MONGO_URL'] = mongodb://...)"
        raise ValueError(msg)
    try:
        redis_backend.call("bench", lambda r: r.ping())
    except BackendUnavailable as exc:
        msg = f"the connections benchmark needs a Redis all worker processes share: {exc}"
        raise ValueError(msg) from exc
    out = []
    for name in arms or list(ARMS):
        if progress:
            progress(f"running {name} ({workers} processes x {threads} threads, {requests} requests) ...")
        out.append(_run_arm(name, ARMS[name], workers=workers, threads=threads, requests=requests, seed=seed))
    try:
        mongo.drop_demo_database(DATABASE)
    except BackendUnavailable:
        pass
    return out


def format_table(results: list[ArmResult]) -> str:
    """A markdown table, the all-on-MongoDB arm first; the last column compares each peak with it."""
    results = sorted(results, key=lambda r: r.name != BEFORE)
    base = results[0] if results and results[0].name == BEFORE else None
    buf = io.StringIO()
    buf.write("| arm | requests | fallbacks | peak connections open | connections opened | pool peaks per worker | "
              "lane waits / overflows / refusals (ms waited) | MongoDB ops / request | "
              "largest MongoDB shares (ops per 1,000 requests) | peak vs all on MongoDB |\n")
    buf.write("|---|---|---|---|---|---|---|---|---|---|\n")
    for r in results:
        shares = sorted(r.mongo_by_feature.items(), key=lambda kv: -kv[1])[:3]
        top = ", ".join(f"{k} {1000 * v / max(1, r.requests):.0f}" for k, v in shares) or "none"
        ratio = f"{100 * r.peak_connections / base.peak_connections:.0f}%" if base and base.peak_connections else "-"
        pools = "/".join(str(n) for n in r.pool_peaks)
        buf.write(f"| {r.name} | {r.requests} | {r.fallbacks} | {r.peak_connections} | {r.opened_connections} | "
                  f"{pools} | {r.lane_waits} / {r.lane_overflows} / {r.lane_refusals} ({r.lane_wait_ms}) | "
                  f"{r.mongo_ops_per_request:.3f} | {top} | {ratio} |\n")
    buf.write("\nWhere the connections opened came from (pooled: pymongo's connection_created, per call site, all "
              "workers; monitoring: the rest, one per process with poll):\n\n")
    buf.write("| arm | call site (feature module:function) | connections opened |\n|---|---|---|\n")
    for r in results:
        pooled = sum(r.origins.values())
        buf.write(f"| {r.name} | monitoring (not pooled) | {max(0, r.opened_connections - pooled)} |\n")
        for site, n in r.origins.items():
            buf.write(f"| {r.name} | {site} | {n} |\n")
    return buf.getvalue()
