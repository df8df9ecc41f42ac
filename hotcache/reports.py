"""Usage reports as pure figures (no HTTP): Redis commands against the daily budget, Redis memory, MongoDB
connections, the health gate and fallbacks, and what each feature did, from the daily meter.

The admin pages (hotcache/admin.py) and ``manage.py hotcache_status`` only render what is computed here.
Cost is bounded whatever the traffic: overview() is one Redis round trip for the meter (a pipeline of one
HGETALL per day), one INFO memory and at most one MongoDB serverStatus; feature_summary() is the same meter
pipeline plus whatever its detail sections cost (each one a fixed number of operations; no KEYS, no scans).

Extension point: a feature adds MongoDB-backed detail to its page by registering a function that returns
Sections (tables, optionally with a chart), in its own marked block at the end of this module::

    @register_detail("analytics")
    def _analytics_detail(days: int) -> list[Section]:
        from hotcache import analytics
        ...
        return [Section("Top paths", ["Path", "Views"], rows, chart=Chart(...))]

A detail function that raises BackendUnavailable shows as a note on its section, not as an error.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from hotcache import clock, metering
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import CLOSED, GateState, redis_gate
from hotcache.conf import FEATURES, hotcache_settings
from hotcache.exceptions import BackendUnavailable, HotcacheError, MongoWriteError, RedisUnavailable

__all__ = [
    "FEATURE_EVENTS",
    "FEATURE_TITLES",
    "MAX_DAYS",
    "Chart",
    "DayRow",
    "FeatureSummary",
    "FeatureUsage",
    "Figure",
    "InvalidFilter",
    "Limit",
    "MongoConnections",
    "Overview",
    "Section",
    "feature_summary",
    "overview",
    "register_detail",
    "report_days",
]

log = logging.getLogger("hotcache.reports")

MAX_DAYS = 40  # the meter keeps each day's hash 40 days (metering._METER_TTL)

FEATURE_TITLES: dict[str, str] = {
    "ratelimit": "Rate limiting",
    "users": "User cache",
    "mfa": "MFA codes",
    "apikeys": "API keys",
    "workbench": "Workbench sessions",
    "analytics": "Analytics",
}

# The events each feature records (hotcache BRIEF), in display order. Others seen in the meter follow.
FEATURE_EVENTS: dict[str, tuple[str, ...]] = {
    "ratelimit": ("allowed", "denied", "denied_local", "degraded_open", "degraded_closed", "degraded_local"),
    "users": ("hit", "miss", "fallback", "invalidated"),
    "mfa": ("issued", "verified", "failed", "burned", "expired", "unavailable", "fallback", "resend_blocked"),
    "apikeys": ("allowed", "over_limit", "invalid", "fallback", "created", "revoked"),
    "workbench": ("saved", "loaded", "conflict", "ended", "persisted", "fallback"),
    "analytics": ("tracked", "fallback", "dropped", "synced_counters", "rejected"),
}


# --- result types --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limit:
    """A figure against its limit. ``value`` None means unknown (the source did not answer or lacks it)."""

    name: str
    value: int | None
    limit: int
    setting: str  # the HOTCACHE key the limit comes from
    warning_percent: float = 80.0
    note: str = ""

    @property
    def percent(self) -> float | None:
        if self.value is None or self.limit <= 0:
            return None
        return round(100.0 * self.value / self.limit, 1)

    @property
    def exceeded(self) -> bool:
        return self.value is not None and self.value > self.limit

    @property
    def level(self) -> str:
        """ok | warning | exceeded | unknown."""
        if self.value is None:
            return "unknown"
        if self.exceeded:
            return "exceeded"
        pct = self.percent
        return "warning" if pct is not None and pct >= self.warning_percent else "ok"

    def message(self) -> str:
        return (
            f"{self.name}: {self.value:,} > {self.limit:,} (HOTCACHE[{self.setting!r}])"
            if self.value is not None
            else f"{self.name}: unknown"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "setting": self.setting,
            "percent": self.percent,
            "level": self.level,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class DayRow:
    """One UTC day of the meter."""

    day: dt.date
    commands: int
    round_trips: int
    commands_by_feature: dict[str, int]
    mongo_by_feature: dict[str, int]
    fallbacks: int


@dataclass(frozen=True, slots=True)
class FeatureUsage:
    """One consumer of Redis (a feature, or hotcache's own meter/status) over the period."""

    feature: str
    title: str
    enabled: bool
    shipped: bool  # one of hotcache's features (False: the meter, status probes, the host's "other")
    commands_today: int
    commands: int
    round_trips: int
    mongo_ops: int
    fallbacks: int
    events: int


@dataclass(frozen=True, slots=True)
class MongoConnections:
    pool: mongo.PoolStats
    pool_limit: Limit  # open connections of this process against MONGO_MAX_POOL_SIZE
    server_limit: Limit  # connections against MONGO_SERVER_CONNECTION_LIMIT
    server_source: str  # "serverStatus" (the whole server) | "this process" | "unknown"
    server_status: dict[str, int] | None


@dataclass(frozen=True, slots=True)
class Overview:
    generated_at: dt.datetime
    redis_available: bool
    redis_note: str
    days: list[DayRow]  # newest first
    commands_today: Limit
    features: list[FeatureUsage]
    memory: Limit
    mongo: MongoConnections
    gate: GateState
    fallbacks_today: dict[str, int]
    fallbacks: dict[str, int]  # over the period, per feature

    @property
    def limits(self) -> list[Limit]:
        return [self.commands_today, self.memory, self.mongo.pool_limit, self.mongo.server_limit]

    @property
    def exceeded(self) -> list[Limit]:
        return [limit for limit in self.limits if limit.exceeded]

    @property
    def warnings(self) -> list[str]:
        out = [f"{lim.name} at {lim.percent}% of its limit" for lim in self.limits if lim.level == "warning"]
        if self.mongo.pool.failed_checkouts:
            out.append(
                f"{self.mongo.pool.failed_checkouts} MongoDB connection check-outs failed in this process "
                "(pool exhausted or server unreachable; see HOTCACHE['MONGO_MAX_POOL_SIZE'])"
            )
        if self.gate.state != CLOSED:
            out.append(f"Redis health gate is {self.gate.state}: features are using their fallbacks")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "redis_available": self.redis_available,
            "redis_note": self.redis_note,
            "commands_today": self.commands_today.as_dict(),
            "memory": self.memory.as_dict(),
            "mongo": {
                "pool": self.mongo.pool.as_dict(),
                "pool_limit": self.mongo.pool_limit.as_dict(),
                "server_limit": self.mongo.server_limit.as_dict(),
                "server_source": self.mongo.server_source,
                "server_status": self.mongo.server_status,
            },
            "gate": asdict(self.gate),
            "fallbacks_today": self.fallbacks_today,
            "fallbacks": self.fallbacks,
            "features": [asdict(f) for f in self.features],
            "days": [
                {
                    "day": d.day.isoformat(),
                    "commands": d.commands,
                    "round_trips": d.round_trips,
                    "commands_by_feature": d.commands_by_feature,
                    "mongo_by_feature": d.mongo_by_feature,
                    "fallbacks": d.fallbacks,
                }
                for d in self.days
            ],
            "exceeded": [lim.message() for lim in self.exceeded],
            "warnings": self.warnings,
        }


@dataclass(frozen=True, slots=True)
class Chart:
    """Data for one chart: x labels (oldest first) and one or more series stacked per x."""

    title: str
    labels: list[str]
    series: list[tuple[str, list[int]]]
    limit: int | None = None  # drawn as a line (a budget)
    limit_label: str = ""
    time_series: bool = False  # labels are times, oldest first (the table beside it lists them newest first)


@dataclass(slots=True)
class Section:
    """A titled table (and optional chart) on a report page. ``rows`` empty shows ``empty``."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    chart: Chart | None = None
    note: str = ""
    empty: str = "No data yet."


@dataclass(frozen=True, slots=True)
class Figure:
    """A headline number: label, value (already formatted where it is a ratio), and what it means."""

    label: str
    value: Any
    help: str = ""


@dataclass(slots=True)
class FeatureSummary:
    feature: str
    title: str
    enabled: bool
    days: int
    redis_available: bool
    redis_note: str
    events: list[str]  # the columns of the per-day table
    per_day: list[tuple[dt.date, dict[str, int]]]  # newest first
    totals: dict[str, int]
    today: dict[str, int]
    commands: int
    mongo_ops: int
    figures: list[Figure]
    sections: list[Section]
    filters: dict[str, str] = field(default_factory=dict)  # the detail filters applied (e.g. analytics event)
    notes: list[str] = field(default_factory=list)  # e.g. a filter that was ignored, and why

    @property
    def has_data(self) -> bool:
        return any(self.totals.values()) or self.commands > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "title": self.title,
            "enabled": self.enabled,
            "days": self.days,
            "redis_available": self.redis_available,
            "totals": self.totals,
            "today": self.today,
            "commands": self.commands,
            "mongo_ops": self.mongo_ops,
            "figures": [asdict(f) for f in self.figures],
            "filters": self.filters,
            "notes": self.notes,
            "per_day": [{"day": d.isoformat(), **counts} for d, counts in self.per_day],
            "sections": [
                {"title": s.title, "columns": s.columns, "rows": s.rows, "note": s.note} for s in self.sections
            ],
        }


# --- reading the meter ---------------------------------------------------------------------------


def report_days(days: int | None = None) -> int:
    """The number of days to show: ``days`` or HOTCACHE['REPORTS_DAYS'], clamped to 1..MAX_DAYS."""
    value = hotcache_settings.REPORTS_DAYS if days is None else days
    try:
        value = int(value)
    except (TypeError, ValueError):
        value = 30
    return max(1, min(MAX_DAYS, value))


def _read_meter(days: int) -> tuple[metering.MeterRead, bool, str]:
    """metering.read(days) (one pipeline: the daily meters and the MongoDB pools processes published) and
    whether Redis answered it.

    read() falls back to this process's unflushed counts when Redis is unavailable; its error events
    (counted under the feature "reports") tell the two apart without another round trip.
    """
    watched = ("ev:reports:redis_error", "ev:reports:gate_rejected")
    before = metering.snapshot()
    meter = metering.read(days)
    after = metering.snapshot()
    failed = any(after[k] > before[k] for k in watched)
    if failed or redis_gate.state != CLOSED:
        return meter, False, "Redis is unavailable: figures are this process's unflushed counts only."
    return meter, True, ""


def _day(name: str) -> dt.date:
    return dt.datetime.strptime(name, "%Y%m%d").replace(tzinfo=dt.UTC).date()


def _enabled_features() -> list[str]:
    return [f for f in FEATURES if hotcache_settings.enabled(f)]


def _fallbacks(fields: Counter[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, n in fields.items():
        if name.startswith("ev:") and name.endswith(":fallback") and n:
            feat = name[3:].rsplit(":", 1)[0]
            out[feat] = out.get(feat, 0) + n
    return out


# --- overview ------------------------------------------------------------------------------------


def overview(days: int | None = None) -> Overview:
    """Redis commands today and per day against the budget, per feature; memory; MongoDB connections; gate."""
    n_days = report_days(days)
    warn = _warning_percent()
    meter, redis_ok, redis_note = _read_meter(n_days)
    rows = meter.days
    today = rows[0]
    day_rows = [
        DayRow(
            day=_day(u.day),
            commands=u.commands,
            round_trips=sum(u.by_prefix("rt").values()),
            commands_by_feature=u.by_prefix("cmd"),
            mongo_by_feature=u.by_prefix("mongo"),
            fallbacks=sum(_fallbacks(u.fields).values()),
        )
        for u in rows
    ]
    period: Counter[str] = Counter()
    for u in rows:
        period.update(u.fields)

    enabled = set(_enabled_features())
    seen = {f.split(":", 2)[1] for f in period if f.count(":") >= 1 and f.split(":", 1)[0] in ("cmd", "mongo", "ev")}
    names = [f for f in FEATURES if f in enabled or f in seen] + sorted(seen - set(FEATURES))
    fallbacks = _fallbacks(period)
    features = [
        FeatureUsage(
            feature=f,
            title=FEATURE_TITLES.get(f, f),
            enabled=f in enabled,
            shipped=f in FEATURES,
            commands_today=today.fields.get(f"cmd:{f}", 0),
            commands=period.get(f"cmd:{f}", 0),
            round_trips=period.get(f"rt:{f}", 0),
            mongo_ops=period.get(f"mongo:{f}", 0),
            fallbacks=fallbacks.get(f, 0),
            events=sum(n for k, n in period.items() if k.startswith(f"ev:{f}:")),
        )
        for f in names
    ]

    budget = Limit(
        "Redis commands today",
        today.commands,
        int(hotcache_settings.REDIS_DAILY_COMMAND_BUDGET),
        "REDIS_DAILY_COMMAND_BUDGET",
        warn,
        note="" if redis_ok else "Redis unavailable: this process's unflushed counts only",
    )
    return Overview(
        generated_at=clock.utcnow(),
        redis_available=redis_ok,
        redis_note=redis_note,
        days=day_rows,
        commands_today=budget,
        features=features,
        memory=_memory(warn, redis_ok),
        mongo=_mongo(warn, meter.pools),
        gate=redis_gate.snapshot(),
        fallbacks_today=_fallbacks(today.fields),
        fallbacks=fallbacks,
    )


def _warning_percent() -> float:
    value = hotcache_settings.REPORTS_WARNING_PERCENT
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 80.0


def _memory(warn: float, redis_ok: bool) -> Limit:
    limit = int(hotcache_settings.REDIS_MEMORY_LIMIT)
    used: int | None = None
    note = ""
    if not redis_ok:
        note = "Redis unavailable"
    else:
        try:
            info = redis_backend.server_info("memory")
            used = int(info["used_memory"]) if "used_memory" in info else None
            note = "" if used is not None else "INFO memory has no used_memory"
        except RedisUnavailable:
            # A server without INFO (fakeredis, some proxies) still serves hotcache; memory is just unknown.
            note = "Redis unavailable" if redis_gate.state != CLOSED else "INFO memory not supported by this server"
    return Limit("Redis memory", used, limit, "REDIS_MEMORY_LIMIT", warn, note=note)


def _deployment_pools(pool: mongo.PoolStats, published: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each live process's published pool figures, with this process's own replaced by its current ones."""
    import os
    import socket

    published = dict(published)
    if pool.monitored:
        published[f"{socket.gethostname()}:{os.getpid()}"] = pool.as_dict()
    return published


def _mongo(warn: float, published_pools: dict[str, dict[str, Any]]) -> MongoConnections:
    pool = mongo.pool_stats()
    max_pool = int(hotcache_settings.MONGO_MAX_POOL_SIZE)
    server_cap = int(hotcache_settings.MONGO_SERVER_CONNECTION_LIMIT)
    status: dict[str, int] | None
    try:
        status = mongo.server_status_connections()
    except (BackendUnavailable, MongoWriteError):
        status = None
    pool_value = pool.open if pool.monitored else None
    pool_note = (
        f"peak {pool.peak_open} open, {pool.checked_out} checked out (peak {pool.peak_checked_out}), "
        f"{pool.failed_checkouts} failed check-outs"
        if pool.monitored
        else "not monitored (the in-process stand-in has no pool)"
    )
    deployment = _deployment_pools(pool, published_pools)
    if status and "current" in status:
        server_value: int | None = status["current"]
        source = "serverStatus"
        server_note = f"whole server: {status.get('available', '?')} more available per serverStatus"
    elif deployment:
        server_value = sum(int(p.get("open", 0)) for p in deployment.values())
        source = "this process" if len(deployment) == 1 and pool.monitored else f"{len(deployment)} processes"
        peak = sum(int(p.get("peak_open", 0)) for p in deployment.values())
        server_note = (
            f"sum of the pools hotcache's processes published (each at its last meter flush, within "
            f"{int(metering.POOL_REPORT_FRESH_SECONDS // 60)} minutes); peaks add up to {peak}; "
            "serverStatus not permitted or not available"
        )
    elif pool.monitored:
        server_value, source = pool.open, "this process"
        server_note = "serverStatus not permitted or not available: this process's connections only"
    else:
        server_value, source, server_note = None, "unknown", "no pool figures from the in-process stand-in"
    return MongoConnections(
        pool=pool,
        pool_limit=Limit("MongoDB pool (this process)", pool_value, max_pool, "MONGO_MAX_POOL_SIZE", warn, pool_note),
        server_limit=Limit(
            "MongoDB server connections", server_value, server_cap, "MONGO_SERVER_CONNECTION_LIMIT", warn, server_note
        ),
        server_source=source,
        server_status=status,
    )


# --- per-feature pages ---------------------------------------------------------------------------

DetailFunction = Callable[..., list[Section]]
_DETAILS: dict[str, list[DetailFunction]] = {}
_DETAIL_FILTERS: dict[DetailFunction, tuple[str, ...]] = {}


class InvalidFilter(HotcacheError, ValueError):
    """A report filter (``?event=``) a detail function cannot use; the page ignores it and says why."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def register_detail(feature: str, *, filters: tuple[str, ...] = ()) -> Callable[[DetailFunction], DetailFunction]:
    """Decorator: ``fn(days, **filters) -> [Section, ...]`` adds sections to ``feature``'s report page.

    The function must cost a bounded number of operations (aggregated documents, capped reads) and may
    raise BackendUnavailable, which the page shows as a note on a section titled after the function.
    ``filters`` names the keyword arguments it accepts from the page's query string (strings, unvalidated:
    the function validates them and raises InvalidFilter, after which it is called again without them).
    """
    if feature not in FEATURES:
        msg = f"unknown feature {feature!r}; expected one of {FEATURES}"
        raise ValueError(msg)

    def decorate(fn: DetailFunction) -> DetailFunction:
        if fn not in _DETAILS.setdefault(feature, []):
            _DETAILS[feature].append(fn)
        _DETAIL_FILTERS[fn] = tuple(filters)
        return fn

    return decorate


def detail_filters(feature: str) -> list[str]:
    """The query-string filters ``feature``'s page accepts (from its registered detail functions)."""
    return sorted({name for fn in _DETAILS.get(feature, []) for name in _DETAIL_FILTERS.get(fn, ())})


def _run_detail(fn: DetailFunction, days: int, filters: dict[str, str], summary: FeatureSummary) -> list[Section]:
    kwargs = {k: filters[k] for k in _DETAIL_FILTERS.get(fn, ()) if filters.get(k)}
    if kwargs:
        try:
            out = fn(days, **kwargs)
        except InvalidFilter as exc:
            summary.notes.append(f"Ignored the {exc.name} filter: {exc}")
            summary.filters.pop(exc.name, None)
        else:
            summary.filters.update(kwargs)
            return out
    return fn(days)


def feature_summary(feature: str, days: int | None = None, filters: dict[str, str] | None = None) -> FeatureSummary:
    """Per-day event counts for ``feature`` from the meter, derived figures, and its detail sections.

    ``filters`` (e.g. ``{"event": "signup"}`` for analytics) go to the detail functions that declare them.
    """
    if feature not in FEATURES:
        msg = f"unknown feature {feature!r}; expected one of {FEATURES}"
        raise ValueError(msg)
    n_days = report_days(days)
    meter, redis_ok, redis_note = _read_meter(n_days)
    rows = meter.days
    prefix = f"ev:{feature}:"
    per_day: list[tuple[dt.date, dict[str, int]]] = []
    totals: Counter[str] = Counter()
    commands = mongo_ops = 0
    for u in rows:
        counts = {k[len(prefix) :]: n for k, n in u.fields.items() if k.startswith(prefix) and n}
        per_day.append((_day(u.day), counts))
        totals.update(counts)
        commands += u.fields.get(f"cmd:{feature}", 0)
        mongo_ops += u.fields.get(f"mongo:{feature}", 0)
    known = FEATURE_EVENTS[feature]
    # Per-rule events (allowed:<rule>) go to their own section, not the per-day columns.
    extra = sorted(e for e in totals if e not in known and ":" not in e)
    events = list(known) + extra
    summary = FeatureSummary(
        feature=feature,
        title=FEATURE_TITLES[feature],
        enabled=hotcache_settings.enabled(feature),
        days=n_days,
        redis_available=redis_ok,
        redis_note=redis_note,
        events=events,
        per_day=[(d, {e: c.get(e, 0) for e in events}) for d, c in per_day],
        totals={e: totals.get(e, 0) for e in events},
        today={e: per_day[0][1].get(e, 0) for e in events},
        commands=commands,
        mongo_ops=mongo_ops,
        figures=[],
        sections=[],
    )
    derive = _DERIVED.get(feature)
    if derive is not None:
        derive(summary, totals)
    for fn in _DETAILS.get(feature, []):
        try:
            summary.sections.extend(_run_detail(fn, n_days, dict(filters or {}), summary))
        except BackendUnavailable as exc:
            title = (fn.__doc__ or fn.__name__).strip().splitlines()[0]
            summary.sections.append(Section(title, [], note=f"{exc.backend} unavailable: {exc}"))
            log.warning("hotcache: report detail %s for %s unavailable: %s", fn.__name__, feature, exc)
    return summary


def _ratio(part: int, whole: int) -> str:
    return "n/a" if whole <= 0 else f"{100.0 * part / whole:.1f}%"


def _derive_ratelimit(s: FeatureSummary, totals: Counter[str]) -> None:
    allowed, denied = totals["allowed"], totals["denied"]
    s.figures += [
        Figure("Requests checked", allowed + denied, "allowed + denied"),
        Figure("Allowed", allowed),
        Figure("Denied", denied, "answered 429 (or the configured status)"),
        Figure("Denied from the local deny cache", totals["denied_local"], "no Redis command spent"),
        Figure("Denial rate", _ratio(denied, allowed + denied)),
        Figure(
            "Degraded decisions",
            totals["degraded_open"] + totals["degraded_closed"] + totals["degraded_local"],
            "decided by the outage policy while Redis was unavailable",
        ),
    ]
    rules = sorted({e.split(":", 1)[1] for e in totals if e.startswith(("allowed:", "denied:"))})
    rows = [
        [
            rule,
            totals[f"allowed:{rule}"],
            totals[f"denied:{rule}"],
            _ratio(totals[f"denied:{rule}"], totals[f"allowed:{rule}"] + totals[f"denied:{rule}"]),
        ]
        for rule in rules
    ]
    chart = (
        Chart(
            "Allowed and denied per rule",
            rules,
            [("allowed", [r[1] for r in rows]), ("denied", [r[2] for r in rows])],
        )
        if rows
        else None
    )
    s.sections.append(
        Section("Per rule", ["Rule", "Allowed", "Denied", "Denial rate"], rows, chart=chart,
                empty="No rule has been checked yet.")
    )


def _derive_users(s: FeatureSummary, totals: Counter[str]) -> None:
    hit, miss = totals["hit"], totals["miss"]
    s.figures += [
        Figure("Cache hit ratio", _ratio(hit, hit + miss), "hits / (hits + misses)"),
        Figure("Database queries avoided", hit, "each hit is a user lookup the database did not serve"),
        Figure("Misses (loaded from the database)", miss),
        Figure("Fallbacks (Redis unavailable)", totals["fallback"]),
        Figure("Invalidations", totals["invalidated"]),
    ]


def _derive_mfa(s: FeatureSummary, totals: Counter[str]) -> None:
    verified, failed = totals["verified"], totals["failed"]
    s.figures += [
        Figure("Codes issued", totals["issued"]),
        Figure("Verified", verified),
        Figure("Failed attempts", failed),
        Figure("Verification success rate", _ratio(verified, verified + failed), "verified / (verified + failed)"),
        Figure("Codes burned (too many attempts)", totals["burned"]),
        Figure("Expired", totals["expired"]),
        Figure("Resends blocked", totals["resend_blocked"]),
        Figure("Fallbacks (MongoDB path)", totals["fallback"]),
    ]


def _derive_apikeys(s: FeatureSummary, totals: Counter[str]) -> None:
    allowed, over = totals["allowed"], totals["over_limit"]
    s.figures += [
        Figure("Requests allowed", allowed),
        Figure("Over their limit", over),
        Figure("Over-limit share", _ratio(over, allowed + over)),
        Figure("Invalid keys presented", totals["invalid"]),
        Figure("Keys created", totals["created"]),
        Figure("Keys revoked", totals["revoked"]),
        Figure("Fallbacks", totals["fallback"]),
    ]


def _derive_workbench(s: FeatureSummary, totals: Counter[str]) -> None:
    s.figures += [
        Figure("Saves", totals["saved"]),
        Figure("Loads", totals["loaded"]),
        Figure("Conflicts", totals["conflict"], "a save lost to a newer version"),
        Figure("Sessions ended", totals["ended"]),
        Figure("Sessions persisted to MongoDB", totals["persisted"]),
        Figure("Fallbacks", totals["fallback"]),
    ]


def _derive_analytics(s: FeatureSummary, totals: Counter[str]) -> None:
    tracked = totals["tracked"]
    s.figures += [
        Figure("Events tracked", tracked),
        Figure("Counters synced to MongoDB", totals["synced_counters"]),
        Figure("Dropped", totals["dropped"], "lost while both stores were unavailable"),
        Figure("Drop rate", _ratio(totals["dropped"], tracked + totals["dropped"])),
        Figure("Rejected", totals["rejected"], "invalid event names or properties"),
        Figure("Fallbacks (direct to MongoDB)", totals["fallback"]),
    ]


_DERIVED: dict[str, Callable[[FeatureSummary, Counter[str]], None]] = {
    "ratelimit": _derive_ratelimit,
    "users": _derive_users,
    "mfa": _derive_mfa,
    "apikeys": _derive_apikeys,
    "workbench": _derive_workbench,
    "analytics": _derive_analytics,
}


# --- feature detail sections (MongoDB-backed), one marked block per feature ----------------------
# Each block registers functions with @register_detail("<feature>"); see the module docstring.

# --- Rate limiting (issue 3) ---

# --- Cached users (issue 4) ---

# --- MFA codes (issue 5) ---

# --- API keys (issue 6) ---
# Cost: apikeys.list_keys(limit=APIKEYS_READ) (2 MongoDB queries, 1 Redis round trip of one GET per key
# read: at most APIKEYS_READ, never growing with traffic) and apikeys.usage_many() for the APIKEYS_DAILY
# busiest keys (2 MongoDB queries, 1 Redis round trip of APIKEYS_DAILY x days GETs).

APIKEYS_SHOWN = 50  # keys listed (the most used today)
APIKEYS_READ = 1000  # keys read for the page, newest first: bounds its Redis GETs
APIKEYS_DAILY = 8  # keys charted per day (one colour each)


def _key_label(info: Any) -> str:
    return f"{info.prefix} {info.name}".strip()


def _busiest(days: list[tuple[dt.date, int]]) -> str:
    day, n = max(days, key=lambda dn: (dn[1], dn[0]))
    return day.isoformat() if n else ""


@register_detail("apikeys")
def _apikeys_detail(days: int) -> list[Section]:
    """API keys in MongoDB"""
    from hotcache import apikeys

    infos = apikeys.list_keys(limit=APIKEYS_READ)
    now = clock.utcnow()
    warn = _warning_percent()

    def status(k: Any) -> str:
        if k.revoked_at is not None:
            return "revoked"
        if k.expires_at is not None and k.expires_at <= now:
            return "expired"
        if k.daily_limit and k.used_today >= k.daily_limit:
            return "at limit"
        if k.daily_limit and 100.0 * k.used_today / k.daily_limit >= warn:
            return "near limit"
        return "active"

    ranked = sorted(infos, key=lambda k: (-k.used_today, -k.created_at.timestamp(), k.key_id))
    shown = ranked[:APIKEYS_SHOWN]
    if len(infos) >= APIKEYS_READ:
        cap_note = f"Showing {len(shown)} of the {APIKEYS_READ:,} newest keys (the most used today among them)."
    elif len(infos) > len(shown):
        cap_note = f"Showing {len(shown)} of {len(infos)} keys (the most used today)."
    else:
        cap_note = ""
    rows = [
        [
            k.prefix,
            k.name,
            k.owner,
            f"{k.daily_limit:,}" if k.daily_limit else "none",
            k.used_today,
            _ratio(k.used_today, k.daily_limit) if k.daily_limit else "",
            status(k),
        ]
        for k in shown
    ]
    near = [k for k in ranked if status(k) in ("at limit", "near limit")][:APIKEYS_SHOWN]
    gone = sorted(
        (k for k in infos if status(k) in ("revoked", "expired")),
        key=lambda k: k.revoked_at or k.expires_at or now,
        reverse=True,
    )[:APIKEYS_SHOWN]
    sections = [
        Section(
            "Keys by use today",
            ["Key", "Name", "Owner", "Daily limit", "Used today", "Of limit", "Status"],
            rows,
            note=cap_note,
            empty="No API keys yet.",
        ),
        Section(
            "Near or at their daily limit today",
            ["Key", "Name", "Owner", "Used today", "Daily limit", "Of limit", "Status"],
            [[k.prefix, k.name, k.owner, k.used_today, k.daily_limit, _ratio(k.used_today, k.daily_limit or 0),
              status(k)] for k in near],
            note=f"Active keys at {warn:g}% (HOTCACHE['REPORTS_WARNING_PERCENT']) of their daily limit or more; "
            "requests refused over the limit are counted as over_limit above.",
            empty="No key is near its daily limit.",
        ),
        Section(
            "Revoked and expired keys",
            ["Key", "Name", "Owner", "Status", "Since (UTC)"],
            [[k.prefix, k.name, k.owner, status(k),
              (k.revoked_at or k.expires_at).strftime("%Y-%m-%d %H:%M")] for k in gone],
            empty="No revoked or expired keys.",
        ),
    ]
    busiest = shown[:APIKEYS_DAILY]
    per_key = apikeys.usage_many([k.key_id for k in busiest], days) if busiest else {}
    charted = [k for k in busiest if k.key_id in per_key]
    day_list = [d for d, _ in per_key[charted[0].key_id]][::-1] if charted else []
    series = [(_key_label(k), [n for _, n in per_key[k.key_id]][::-1]) for k in charted]
    daily_rows = [
        [_key_label(k), k.owner, sum(n for _, n in per_key[k.key_id]),
         _busiest(per_key[k.key_id])]
        for k in charted
    ]
    sections.append(
        Section(
            f"Uses per day, last {days} days",
            ["Key", "Owner", f"Uses in {days} days", "Busiest day"],
            daily_rows,
            chart=Chart(
                f"Uses per day of the {len(charted)} keys most used today",
                [d.strftime("%m-%d") for d in day_list],
                series,
                time_series=True,
            )
            if charted
            else None,
            note=f"The {APIKEYS_DAILY} keys most used today; the table beside the chart has each key's count per day."
            if charted
            else "",
            empty="No API keys yet.",
        )
    )
    return sections

# --- Workbench (issue 7) ---


@register_detail("workbench")
def _workbench_sessions(days: int) -> list[Section]:
    """Sessions in Redis now"""
    from hotcache import workbench

    c = workbench.counts()  # one Redis round trip of 4 O(1)/O(log n) commands
    return [
        Section(
            "Sessions in Redis now",
            ["Sessions", "Count"],
            [
                ["active (hot or waiting to be persisted)", c.active],
                ["idle longer than WORKBENCH_PERSIST_IDLE_AFTER", c.idle],
                ["ended, queued for history", c.ended],
                ["claimed by a persister run", c.claimed],
            ],
        )
    ]


@register_detail("workbench")
def _workbench_history(days: int) -> list[Section]:
    """Persisted sessions in MongoDB"""
    # One count on the history collection: bounded whatever the traffic.
    total = mongo.collection("workbench_history", feature="reports").count({})
    return [
        Section(
            "Persisted sessions in MongoDB",
            ["Collection", "Documents"],
            [["workbench_history", total]],
            note="Ended sessions that reached MongoDB history (all time).",
        )
    ]


# --- Analytics (issue 8) ---
# One analytics.report() for the page's range: 4 MongoDB queries on aggregated hourly documents plus
# at most 4 Redis round trips over the unsynced hours (bounded by ANALYTICS_RETENTION_HOURS and the
# per-hour/per-day cardinality caps, not by traffic).

ANALYTICS_HOURS = 48  # hours in the per-hour chart (the last 48, or fewer when the range is shorter)
ANALYTICS_VISITOR_ROWS = 200  # rows of the distinct visitors table


@register_detail("analytics", filters=("event",))
def _analytics_detail(days: int, event: str | None = None) -> list[Section]:
    """Analytics events from MongoDB and unsynced Redis counters"""
    from hotcache import analytics
    from hotcache.exceptions import InvalidName

    if event is not None:
        try:
            event = analytics.validate_event(event)
        except InvalidName as exc:
            msg = f"event names match {analytics.EVENT_PATTERN} ({str(event)[:70]!r} does not)"
            raise InvalidFilter("event", msg) from exc
    now = clock.utcnow()
    end = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    start = dt.datetime.combine(now.date() - dt.timedelta(days=days - 1), dt.time(), tzinfo=dt.UTC)
    rep = analytics.report(start, end, event)
    of = f" ({event})" if event else ""

    hourly = dict(rep.hourly)
    first_hour = max(start, end - dt.timedelta(hours=ANALYTICS_HOURS))
    n_hours = int((end - first_hour).total_seconds() // 3600)
    hours = [first_hour + dt.timedelta(hours=i) for i in range(n_hours)]
    daily = dict(rep.daily)
    day_list = [start.date() + dt.timedelta(days=i) for i in range(days)]
    visitors = sorted(rep.visitors, key=lambda v: (-v[1].toordinal(), v[0]))
    visitor_note = (
        f"Showing {ANALYTICS_VISITOR_ROWS} of {len(visitors)} rows (newest days first)."
        if len(visitors) > ANALYTICS_VISITOR_ROWS
        else ""
    )
    redis_down = redis_gate.state != CLOSED
    return [
        Section(
            f"Events per hour{of}, last {n_hours} hours (UTC)",
            ["Hour (UTC)", "Events"],  # the chart's own table lists them
            chart=Chart(f"Events per hour{of}", [h.strftime("%m-%d %H:00") for h in hours],
                        [("events", [hourly.get(h, 0) for h in hours])], time_series=True),
            empty=f"No events in the last {n_hours} hours.",
        ),
        Section(
            f"Events per day{of}, last {days} days (UTC)",
            ["Day (UTC)", "Events"],
            chart=Chart(f"Events per day{of}", [d.strftime("%m-%d") for d in day_list],
                        [("events", [daily.get(d, 0) for d in day_list])], time_series=True),
            empty=f"No events in the last {days} days.",
        ),
        Section(
            "Top events",
            ["Event", "Count"],
            [[e, n] for e, n in rep.top_events],
            chart=Chart("Top events", [e for e, _ in rep.top_events[:10]],
                        [("count", [n for _, n in rep.top_events[:10]])]) if rep.top_events else None,
            empty="No events in this range.",
        ),
        Section("Top paths", ["Path", "Count"], [[p or "(none)", n] for p, n in rep.top_paths],
                empty="No paths in this range."),
        Section(
            "Distinct visitors per event and day",
            ["Day (UTC)", "Event", "Visitors"],
            [[d.isoformat(), e, n] for e, d, n in visitors[:ANALYTICS_VISITOR_ROWS]],
            note=visitor_note or "HyperLogLog estimates (about 0.8% error); not counted while Redis is down.",
            empty="No visitors counted in this range.",
        ),
        Section(
            "Not yet synced to MongoDB",
            ["Counts", "Events"],
            [["still only in Redis (included above)", rep.unsynced]],
            note="Redis is unavailable: unsynced counts are unknown and not included above." if redis_down else
            "The sync (hotcache.tasks.sync_analytics, hourly) moves closed hours to MongoDB.",
        ),
    ]
