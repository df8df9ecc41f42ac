"""The demo: realistic traffic through Django's WSGI handler (the real middleware stack), then the syncs, then a report.

Each feature contributes a Scenario (config/demo/scenarios.py lists them). The runner
merges their settings and middleware, interleaves their requests by weight with a seeded RNG,
measures Redis commands and MongoDB operations during the traffic phase (the request path) and
during the sync phase separately, and asks each scenario for its part of the report.

The demo writes only under the key prefix ``hcdemo`` and the MongoDB database ``hotcache_demo``,
and clears both when it starts. It runs only under its own settings (config/demo/isolation.py).

What counts as a failure (the report lists each; the command exits non-zero): any 5xx; any response
whose status is not in its scenario's ``expected_statuses``; any record of Django's security log
(a DisallowedHost answers 400); any ERROR record of hotcache's log other than those
``config.demo.logs.EXPECTED_ERRORS`` explains; any failure a scenario's ``verify`` returns (an outcome
it expected did not happen).
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

from config.demo import logs
from config.demo.figures import Figure
from config.demo.isolation import launched_from
from hotcache import analytics, metering
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import redis_gate
from hotcache.conf import hotcache_settings
from hotcache.exceptions import BackendUnavailable

__all__ = [
    "DEMO_DATABASE",
    "DEMO_PREFIX",
    "DemoContext",
    "DemoRequest",
    "DemoResponse",
    "DemoResult",
    "Figure",
    "Scenario",
    "one_op_per_request",
    "prepared_context",
    "run_demo",
]

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
    requests_by_scenario: Counter[str] = field(default_factory=Counter)
    # Set before the scenarios' verify(): Redis failed during the run (the health gate opened), so a sync
    # that could not reach Redis left its work for the next run, as designed, rather than failing.
    redis_was_unavailable: bool = False
    # (scenario, status) -> [count, first request seen] for responses outside the scenario's expected statuses
    unexpected: dict[tuple[str, int], list[Any]] = field(default_factory=dict)


@dataclass(slots=True)
class Scenario:
    """One feature's part of the demo. Only ``name`` and ``make_request`` are required.

    ``expected_statuses``: the HTTP statuses this scenario's requests may answer; any other is a failure.
    ``verify``: after the report, what the scenario expected and did not see, one sentence each (empty: all
    as expected). ``mongo_ops_without_hotcache``: the MongoDB operations the same traffic costs on the
    background document's "before" path (for "MongoDB operations saved"); None where that path had no MongoDB.
    """

    name: str
    make_request: Callable[[DemoContext, int], DemoRequest]
    expected_statuses: frozenset[int] = frozenset({200})
    weight: float = 1.0
    every: int | None = None  # also (or only, with weight 0) every Nth request, deterministically
    settings: dict[str, Any] = field(default_factory=dict)  # merged into HOTCACHE
    middleware: list[str] = field(default_factory=list)  # dotted paths inserted into MIDDLEWARE
    replaces_middleware: dict[str, str] = field(default_factory=dict)  # old dotted path -> new one
    setup: Callable[[DemoContext], None] | None = None
    on_response: Callable[[DemoContext, DemoRequest, DemoResponse], None] | None = None
    finish: Callable[[DemoContext], list[Figure]] | None = None  # the sync phase; returns figures
    report: Callable[[DemoContext], list[Figure]] | None = None
    verify: Callable[[DemoContext], list[str]] | None = None
    mongo_ops_without_hotcache: Callable[[DemoContext], int] | None = None


def one_op_per_request(name: str) -> Callable[[DemoContext], int]:
    """``mongo_ops_without_hotcache`` of a scenario whose "before" path cost one MongoDB operation per request."""
    return lambda ctx: ctx.requests_by_scenario[name]


@dataclass(slots=True)
class DemoResult:
    """What a run measured. ``as_dict()`` is the ``--json`` output; its keys are documented in docs/demo.md."""

    requests: int
    seconds: float
    statuses: dict[int, int]
    redis_on_request_path: dict[str, int]  # commands per feature during traffic
    redis_billed_on_request_path: dict[str, int]  # billed commands per feature during traffic
    redis_round_trips_on_request_path: int
    mongo_ops_on_request_path: dict[str, int]
    redis_sync: dict[str, int]
    mongo_ops_sync: dict[str, int]
    # Today's meter under the demo's prefix: Redis's day hash plus unflushed counts (with Redis down: only those).
    redis_commands_today: int  # commands sent
    redis_billed_today: int  # billed commands: what REDIS_DAILY_COMMAND_BUDGET counts
    daily_budget: int
    health: dict[str, Any]
    features: dict[str, list[Figure]]
    redis_backend: str
    mongo_backend: str
    settings_module: str
    launched_from: str
    requests_by_scenario: dict[str, int]
    redis_commands_per_1000_requests: float
    # Billed Redis commands (what a per-command provider bills) during the traffic, every feature and the
    # meter's own flushes included, per 1,000 requests.
    billed_commands_per_1000_requests: float
    round_trips_per_request: float
    mongo_ops_without_hotcache: dict[str, int]
    mongo_ops_with_hotcache: dict[str, int]
    mongo_ops_saved: int
    logged: list[logs.LoggedRecord]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def verdict(self) -> str:
        """The report's last line: PASS or FAIL, with what a reader checks first."""
        if self.passed:
            return (
                f"PASS: {self._requests_text()}, 0 unexpected failures, "
                f"{self.redis_commands_per_1000_requests:,.1f} Redis commands "
                f"({self.billed_commands_per_1000_requests:,.1f} billed) per 1,000 requests, "
                f"{self.mongo_ops_saved:,} MongoDB operations saved"
            )
        return f"FAIL: {self._requests_text()}, {len(self.failures):,} unexpected failure(s) (listed under Failures)"

    def _requests_text(self) -> str:
        return f"{self.requests:,} request{'' if self.requests == 1 else 's'}"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f: getattr(self, f) for f in self.__slots__}
        out["statuses"] = {str(k): v for k, v in self.statuses.items()}
        out["features"] = {name: {f.key: f.value for f in figs} for name, figs in self.features.items()}
        out["logged"] = [rec.as_dict() for rec in self.logged]
        out["passed"] = self.passed
        out["verdict"] = self.verdict
        return out


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
    settings_module = str(settings.SETTINGS_MODULE)  # override_settings hides it (UserSettingsHolder has None)
    with override_settings(HOTCACHE=hot, MIDDLEWARE=_middleware(scenarios), ROOT_URLCONF="config.demo.urls"):
        return _run(scenarios, requests=requests, seed=seed, progress=progress, settings_module=settings_module)


def prepared_context(scenarios: list[Scenario], *, requests: int, seed: int) -> DemoContext:
    """A fresh context for a run of ``requests`` requests, after each scenario's setup (the demo and the
    connections benchmark start their runs alike)."""
    ctx = DemoContext(rng=random.Random(seed), total_requests=requests)
    for sc in scenarios:
        ctx.data.setdefault(sc.name, {})
        if sc.setup:
            sc.setup(ctx)
    return ctx


def _run(
    scenarios: list[Scenario],
    *,
    requests: int,
    seed: int,
    progress: Callable[[int, int], None] | None,
    settings_module: str,
) -> DemoResult:
    logs.reset()  # before the clearing: a Redis found down there logs the gate opening
    _clear_demo_data()
    ctx = prepared_context(scenarios, requests=requests, seed=seed)

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
        ctx.requests_by_scenario[sc.name] += 1
        if resp.status >= 500 or resp.status not in sc.expected_statuses:
            seen = ctx.unexpected.setdefault((sc.name, resp.status), [0, f"{req.method} {req.path}"])
            seen[0] += 1
        if sc.on_response:
            sc.on_response(ctx, req, resp)
        if progress:
            progress(i + 1, requests)
    # With ANALYTICS_BATCH_SECONDS, the last interval's batch: what the process writes when the interval ends.
    analytics.flush_batch()
    seconds = time.perf_counter() - start
    traffic = _delta(before)

    before_sync = metering.snapshot()
    features: dict[str, list[Figure]] = {}
    for sc in scenarios:
        if sc.finish:
            features.setdefault(sc.name, []).extend(sc.finish(ctx))
    sync = _delta(before_sync)
    for sc in scenarios:
        if sc.report:
            features.setdefault(sc.name, []).extend(sc.report(ctx))

    # The day's count is read once, here, after everything the run sends to Redis (the reading is Redis's
    # day hash plus this process's unflushed counts). The report used to print a second, earlier reading
    # too: the reports scenario's overview, taken before its own reads and the run's last meter flush.
    metering.flush()
    today = metering.usage(days=1)[0]
    gate = redis_gate.snapshot()
    ctx.redis_was_unavailable = gate.opens > 0 or gate.state != "closed"
    failures = _failures(scenarios, ctx)
    on_path, billed_path = _split(traffic, "cmd"), _split(traffic, "billed")
    mongo_path, mongo_sync = _split(traffic, "mongo"), _split(sync, "mongo")
    without = {sc.name: sc.mongo_ops_without_hotcache(ctx) for sc in scenarios if sc.mongo_ops_without_hotcache}
    with_hotcache = {name: mongo_path.get(name, 0) + mongo_sync.get(name, 0) for name in without}
    round_trips = sum(_split(traffic, "rt").values())
    return DemoResult(
        requests=requests,
        seconds=round(seconds, 3),
        statuses=dict(sorted(ctx.statuses.items())),
        redis_on_request_path=on_path,
        redis_round_trips_on_request_path=round_trips,
        mongo_ops_on_request_path=mongo_path,
        redis_sync=_split(sync, "cmd"),
        mongo_ops_sync=mongo_sync,
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
        settings_module=settings_module,
        launched_from=launched_from(),
        requests_by_scenario=dict(sorted(ctx.requests_by_scenario.items())),
        redis_commands_per_1000_requests=round(1000 * sum(on_path.values()) / requests, 1),
        billed_commands_per_1000_requests=round(1000 * sum(billed_path.values()) / requests, 1),
        redis_billed_on_request_path=billed_path,
        redis_billed_today=today.billed,
        round_trips_per_request=round(round_trips / requests, 2),
        mongo_ops_without_hotcache=without,
        mongo_ops_with_hotcache=with_hotcache,
        mongo_ops_saved=sum(without.values()) - sum(with_hotcache.values()),
        logged=logs.collected(),
        failures=failures,
    )


def _failures(scenarios: list[Scenario], ctx: DemoContext) -> list[str]:
    """Every failure of the run, one sentence each (see the module docstring for what counts)."""
    failures = []
    by_name = {sc.name: sc for sc in scenarios}
    for (name, status), (n, example) in sorted(ctx.unexpected.items()):
        expected = ", ".join(str(s) for s in sorted(by_name[name].expected_statuses))
        failures.append(f"{name}: {n} response(s) {status}, expected {expected} (first: {example})")
    for rec in logs.collected():
        if rec.logger.startswith("django.security"):
            failures.append(f"{rec.logger}: {rec.count} x {rec.message}")
        elif rec.is_error and not rec.logger.startswith("django.request") and logs.expected_because(rec) is None:
            # django.request logs a 5xx as an error: already a failure above, by scenario and status
            failures.append(f"{rec.logger} logged {rec.count} {rec.level} record(s): {rec.message}")
    for sc in scenarios:
        if sc.verify:
            failures.extend(f"{sc.name}: {problem}" for problem in sc.verify(ctx))
    return failures


def _describe_redis() -> str:
    if hotcache_settings.REDIS_URL:  # hotcache's own Redis (a cluster: HOTCACHE['REDIS_CLUSTER'])
        where = str(hotcache_settings.REDIS_URL).rsplit("@", 1)[-1]
        return f"{where} (Redis Cluster)" if hotcache_settings.REDIS_CLUSTER else where
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
