"""The demo: realistic traffic through Django's WSGI handler (the real middleware stack), then the syncs, then a report.

Each feature contributes a Scenario (config/demo/scenarios.py lists them). The runner
merges their settings and middleware, interleaves their requests by weight with a seeded RNG,
measures Redis commands and MongoDB operations during the traffic phase (the request path) and
during the sync phase separately, and asks each scenario for its part of the report.

The demo writes only under the key prefix ``hcdemo`` and the MongoDB database ``hotcache_demo``,
and clears both when it starts.
"""

from __future__ import annotations

import io
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.test import RequestFactory
from django.test.utils import override_settings

from hotcache import analytics, metering
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import redis_gate
from hotcache.conf import hotcache_settings
from hotcache.exceptions import BackendUnavailable

__all__ = ["DEMO_DATABASE", "DEMO_PREFIX", "DemoContext", "DemoRequest", "DemoResult", "Scenario", "run_demo"]

DEMO_PREFIX = "hcdemo"
DEMO_DATABASE = "hotcache_demo"


@dataclass(slots=True)
class DemoRequest:
    method: str
    path: str
    scenario: str = ""
    data: Any = None
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)  # WSGI environ keys, e.g. REMOTE_ADDR, HTTP_X_API_KEY
    tag: str = ""  # what the scenario expects, for its own bookkeeping


@dataclass(slots=True)
class DemoResponse:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class DemoContext:
    rng: random.Random
    total_requests: int
    data: dict[str, Any] = field(default_factory=dict)  # scenario-owned state, keyed by scenario name
    statuses: Counter[int] = field(default_factory=Counter)


@dataclass(slots=True)
class Scenario:
    """One feature's part of the demo. Only ``name`` and ``make_request`` are required."""

    name: str
    make_request: Callable[[DemoContext, int], DemoRequest]
    weight: float = 1.0
    every: int | None = None  # also (or only, with weight 0) every Nth request, deterministically
    settings: dict[str, Any] = field(default_factory=dict)  # merged into HOTCACHE
    middleware: list[str] = field(default_factory=list)  # dotted paths inserted into MIDDLEWARE
    replaces_middleware: dict[str, str] = field(default_factory=dict)  # old dotted path -> new one
    setup: Callable[[DemoContext], None] | None = None
    on_response: Callable[[DemoContext, DemoRequest, DemoResponse], None] | None = None
    finish: Callable[[DemoContext], dict[str, Any]] | None = None  # the sync phase; returns figures
    report: Callable[[DemoContext], dict[str, Any]] | None = None


@dataclass(slots=True)
class DemoResult:
    requests: int
    seconds: float
    statuses: dict[int, int]
    redis_on_request_path: dict[str, int]  # commands per feature during traffic
    redis_round_trips_on_request_path: int
    mongo_ops_on_request_path: dict[str, int]
    redis_sync: dict[str, int]
    mongo_ops_sync: dict[str, int]
    redis_commands_today: int
    daily_budget: int
    health: dict[str, Any]
    features: dict[str, dict[str, Any]]
    redis_backend: str
    mongo_backend: str
    # Billed Redis commands (what a per-command provider bills) during the traffic, every feature and the
    # meter's own flushes included, per 1,000 requests.
    billed_commands_per_1000_requests: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


def _split(delta: Counter[str], kind: str) -> dict[str, int]:
    return {k[len(kind) + 1 :]: v for k, v in sorted(delta.items()) if k.startswith(kind + ":") and v}


def _delta(before: Counter[str]) -> Counter[str]:
    after = metering.snapshot()
    after.subtract(before)
    return after


def _clear_demo_data() -> None:
    """Delete the demo's own keys and collections (and nothing else)."""

    def drop_keys(r: Any) -> int:
        n = 0
        for batch in _chunks(r.scan_iter(match=f"{DEMO_PREFIX}:*", count=1000), 500):
            n += r.unlink(*batch)
        return n

    try:
        redis_backend.call("demo", drop_keys)
    except BackendUnavailable:
        pass
    try:
        mongo.drop_demo_database(DEMO_DATABASE)
    except BackendUnavailable:
        pass


def _chunks(items: Any, size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _middleware(scenarios: list[Scenario]) -> list[str]:
    stack = list(settings.MIDDLEWARE)
    for sc in scenarios:
        for old, new in sc.replaces_middleware.items():
            stack = [new if m == old else m for m in stack]
        for m in sc.middleware:
            if m not in stack:
                stack.append(m)
    return stack


def run_demo(
    scenarios: list[Scenario],
    *,
    requests: int = 2000,
    seed: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    hot = dict(hotcache_settings.user_settings)
    for sc in scenarios:
        hot.update(sc.settings)
    hot["KEY_PREFIX"] = DEMO_PREFIX
    hot["MONGO_DATABASE"] = DEMO_DATABASE
    with override_settings(HOTCACHE=hot, MIDDLEWARE=_middleware(scenarios), ROOT_URLCONF="config.demo.urls"):
        return _run(scenarios, requests=requests, seed=seed, progress=progress)


def _run(
    scenarios: list[Scenario], *, requests: int, seed: int, progress: Callable[[int, int], None] | None
) -> DemoResult:
    _clear_demo_data()
    ctx = DemoContext(rng=random.Random(seed), total_requests=requests)
    for sc in scenarios:
        ctx.data.setdefault(sc.name, {})
        if sc.setup:
            sc.setup(ctx)

    handler = WSGIHandler()
    factory = RequestFactory()
    weights = [sc.weight for sc in scenarios]
    periodic = [sc for sc in scenarios if sc.every]
    before = metering.snapshot()
    start = time.perf_counter()
    for i in range(requests):
        due = [p for p in periodic if (i + 1) % p.every == 0]  # type: ignore[operator]
        sc = due[0] if due else ctx.rng.choices(scenarios, weights=weights)[0]
        req = sc.make_request(ctx, i)
        req.scenario = sc.name
        resp = _send(handler, factory, req)
        ctx.statuses[resp.status] += 1
        if sc.on_response:
            sc.on_response(ctx, req, resp)
        if progress and (i + 1) % max(1, requests // 20) == 0:
            progress(i + 1, requests)
    # With ANALYTICS_BATCH_SECONDS, the last interval's batch: what the process writes when the interval ends.
    analytics.flush_batch()
    seconds = time.perf_counter() - start
    traffic = _delta(before)

    before_sync = metering.snapshot()
    features: dict[str, dict[str, Any]] = {}
    for sc in scenarios:
        if sc.finish:
            features.setdefault(sc.name, {}).update(sc.finish(ctx))
    sync = _delta(before_sync)
    for sc in scenarios:
        if sc.report:
            features.setdefault(sc.name, {}).update(sc.report(ctx))

    metering.flush()
    today = metering.usage(days=1)[0]
    gate = redis_gate.snapshot()
    return DemoResult(
        requests=requests,
        seconds=round(seconds, 3),
        statuses=dict(sorted(ctx.statuses.items())),
        redis_on_request_path=_split(traffic, "cmd"),
        redis_round_trips_on_request_path=sum(_split(traffic, "rt").values()),
        mongo_ops_on_request_path=_split(traffic, "mongo"),
        redis_sync=_split(sync, "cmd"),
        mongo_ops_sync=_split(sync, "mongo"),
        redis_commands_today=today.commands,
        daily_budget=int(hotcache_settings.REDIS_DAILY_COMMAND_BUDGET),
        health={
            "state": gate.state,
            "opens": gate.opens,
            "recoveries": gate.recoveries,
            "calls_skipped_while_open": gate.rejected,
            "fallbacks": {k[3:]: v for k, v in traffic.items() if k.startswith("ev:") and "fallback" in k and v},
        },
        features=features,
        redis_backend=_describe_redis(),
        mongo_backend=mongo.url_scheme(hotcache_settings.MONGO_URL) or "none",
        billed_commands_per_1000_requests=round(1000 * sum(_split(traffic, "billed").values()) / max(requests, 1), 1),
    )


def _describe_redis() -> str:
    alias = hotcache_settings.REDIS_ALIAS
    conf = settings.CACHES.get(alias, {})
    pool_kwargs = conf.get("OPTIONS", {}).get("CONNECTION_POOL_KWARGS", {})
    cls = pool_kwargs.get("connection_class")
    if cls is not None and "fakeredis" in getattr(cls, "__module__", str(cls)):
        return "fakeredis (embedded, in-process)"
    return str(conf.get("LOCATION", "?"))


def _send(handler: WSGIHandler, factory: RequestFactory, req: DemoRequest) -> DemoResponse:
    data = req.data
    if data is None:
        data = b"" if req.method not in ("GET", "HEAD") else ""
    if req.method in ("GET", "HEAD"):
        wsgi_request = factory.generic(req.method, req.path, **req.headers)
        if isinstance(data, dict) and data:
            wsgi_request = factory.get(req.path, data, **req.headers)
    else:
        wsgi_request = factory.generic(req.method, req.path, data, req.content_type, **req.headers)
    environ = dict(wsgi_request.environ)
    environ.setdefault("wsgi.errors", io.StringIO())
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"] = int(status.split(" ", 1)[0])
        captured["headers"] = dict(headers)
        return lambda chunk: None

    chunks = handler(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()
    return DemoResponse(captured["status"], captured["headers"], body)
