"""The overview: Redis billed commands today and per day against the daily budget, the month projected against
the monthly budget, round trips beside them, per feature; the server's own command count; Redis memory;
MongoDB connections of this process and of the deployment; the health gate and fallbacks. See docs/reports.md."""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from hotcache import clock, metering
from hotcache.backends import cluster as cluster_backend
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import CLOSED, GateState, redis_gate
from hotcache.conf import FEATURES, hotcache_settings
from hotcache.exceptions import BackendUnavailable, MongoWriteError, RedisUnavailable
from hotcache.reports import _budget, _meter
from hotcache.reports._budget import MonthProjection, ServerCommands
from hotcache.reports._figures import FEATURE_TITLES, Gauge

__all__ = ["DayRow", "FeatureUsage", "MongoConnections", "Overview", "RedisNode", "overview"]


@dataclass(frozen=True, slots=True)
class DayRow:
    """One UTC day of the meter."""

    day: dt.date
    commands: int
    round_trips: int
    commands_by_feature: dict[str, int]
    mongo_by_feature: dict[str, int]
    fallbacks: int
    billed: int = 0
    billed_by_feature: dict[str, int] = field(default_factory=dict)


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
    billed_today: int = 0
    billed: int = 0


@dataclass(frozen=True, slots=True)
class MongoConnections:
    pool: mongo.PoolStats
    pool_limit: Gauge  # open connections of this process against MONGO_MAX_POOL_SIZE
    server_limit: Gauge  # connections against MONGO_SERVER_CONNECTION_LIMIT
    server_source: str  # "serverStatus" (the whole server) | "this process" | "unknown"
    server_status: dict[str, int] | None


@dataclass(frozen=True, slots=True)
class RedisNode:
    """One master of a Redis Cluster: its memory, the server's billed commands, this process's commands to it."""

    address: str
    used_memory: int | None  # None: the node did not answer (its gate is open, or INFO refused)
    server_billed: int | None  # INFO commandstats on that node (every client), None where not answered
    commands_sent: int  # commands this process sent to it since it started (the meter's count, by node)
    gate: str  # its health gate: closed | open | probing
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Overview:
    generated_at: dt.datetime
    redis_available: bool
    redis_note: str
    days: list[DayRow]  # newest first
    commands_today: Gauge  # billed commands today against REDIS_DAILY_COMMAND_BUDGET
    features: list[FeatureUsage]
    memory: Gauge
    mongo: MongoConnections
    gate: GateState
    fallbacks_today: dict[str, int]
    fallbacks: dict[str, int]  # over the period, per feature
    commands_month: Gauge  # the month's projected billed commands against REDIS_MONTHLY_COMMAND_BUDGET
    month: MonthProjection
    server_commands: ServerCommands  # the server's own count (every client), where INFO commandstats is allowed
    # On a Redis Cluster, each master (memory and the server's count above are their sums); [] on one server.
    redis_nodes: list[RedisNode] = field(default_factory=list)

    @property
    def limits(self) -> list[Gauge]:
        return [self.commands_today, self.commands_month, self.memory, self.mongo.pool_limit, self.mongo.server_limit]

    @property
    def exceeded(self) -> list[Gauge]:
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
            out.append(
                f"Redis health gate is {self.gate.state}: features are using their fallbacks. {self.gate_reason}"
            )
        return out

    @property
    def gate_reason(self) -> str:
        """Why the gate is open and when it retries (GateState.reason at generated_at); "" while closed."""
        return self.gate.reason(self.generated_at.timestamp())

    def as_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "redis_available": self.redis_available,
            "redis_note": self.redis_note,
            "commands_today": self.commands_today.as_dict(),
            "commands_month": self.commands_month.as_dict(),
            "month": self.month.as_dict(),
            "server_commands": self.server_commands.as_dict(),
            "redis_nodes": [n.as_dict() for n in self.redis_nodes],
            "meter_scope": _budget.METER_SCOPE,
            "memory": self.memory.as_dict(),
            "mongo": {
                "pool": self.mongo.pool.as_dict(),
                "pool_limit": self.mongo.pool_limit.as_dict(),
                "server_limit": self.mongo.server_limit.as_dict(),
                "server_source": self.mongo.server_source,
                "server_status": self.mongo.server_status,
            },
            "gate": asdict(self.gate)
            | {
                "reason": self.gate_reason,
                "retry_at_utc": None
                if self.gate.retry_at is None
                else dt.datetime.fromtimestamp(self.gate.retry_at, tz=dt.UTC).isoformat(),
            },
            "fallbacks_today": self.fallbacks_today,
            "fallbacks": self.fallbacks,
            "features": [asdict(f) for f in self.features],
            "days": [
                {
                    "day": d.day.isoformat(),
                    "billed": d.billed,
                    "commands": d.commands,
                    "round_trips": d.round_trips,
                    "billed_by_feature": d.billed_by_feature,
                    "commands_by_feature": d.commands_by_feature,
                    "mongo_by_feature": d.mongo_by_feature,
                    "fallbacks": d.fallbacks,
                }
                for d in self.days
            ],
            "exceeded": [lim.message() for lim in self.exceeded],
            "warnings": self.warnings,
        }


def overview(days: int | None = None) -> Overview:
    """Billed commands today and per day against the budgets, per feature; memory; MongoDB connections; gate."""
    n_days = _meter.report_days(days)
    warn = _meter.warning_percent()
    now = clock.utcnow()
    # The month to date needs every day since the 1st, even when fewer are shown.
    view = _meter.read(max(n_days, _budget.month_days(now)))
    month = _budget.project_month(view.meter.days, now)
    rows = view.meter.days[:n_days]
    today = rows[0]
    day_rows = [
        DayRow(
            day=_meter.day_of(u.day),
            commands=u.commands,
            round_trips=u.round_trips,
            commands_by_feature=u.by_prefix("cmd"),
            mongo_by_feature=u.by_prefix("mongo"),
            fallbacks=sum(_meter.fallbacks(u.fields).values()),
            billed=u.billed,
            billed_by_feature=u.by_prefix("billed"),
        )
        for u in rows
    ]
    period: Counter[str] = Counter()
    for u in rows:
        period.update(u.fields)

    enabled = set(_meter.enabled_features())
    seen = {
        f.split(":", 2)[1]
        for f in period
        if f.count(":") >= 1 and f.split(":", 1)[0] in ("cmd", "billed", "mongo", "ev")
    }
    names = [f for f in FEATURES if f in enabled or f in seen] + sorted(seen - set(FEATURES))
    fallbacks = _meter.fallbacks(period)
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
            billed_today=today.fields.get(f"billed:{f}", 0),
            billed=period.get(f"billed:{f}", 0),
        )
        for f in names
    ]

    local_only = "" if view.redis_ok else "Redis unavailable: this process's unflushed counts only"
    redis_nodes: list[RedisNode] = []
    if hotcache_settings.REDIS_CLUSTER:
        info, redis_nodes = _cluster_info(view.redis_ok)
    else:
        info = _server_info(view.redis_ok)
    return Overview(
        generated_at=clock.utcnow(),
        redis_available=view.redis_ok,
        redis_note=view.redis_note,
        days=day_rows,
        commands_today=_budget.daily_gauge(today, warn, local_only),
        features=features,
        memory=_memory(warn, view.redis_ok, info),
        mongo=_mongo(warn, view.meter.pools),
        gate=redis_gate.snapshot(),
        fallbacks_today=_meter.fallbacks(today.fields),
        fallbacks=fallbacks,
        commands_month=_budget.monthly_gauge(month, warn, local_only),
        month=month,
        server_commands=_budget.server_commands(info.get("commandstats"), info.get("server")),
        redis_nodes=redis_nodes,
    )


_INFO_SECTIONS = ("memory", "commandstats", "server")


def _info_sections(client: Any) -> dict[str, Any]:
    """INFO memory, commandstats and server from ``client`` (one server) in one round trip: the sections it
    answered, non-empty (a section refused by fakeredis or a provider's proxy is left out quietly)."""
    pipe = client.pipeline(transaction=False)
    for section in _INFO_SECTIONS:
        pipe.info(section)
    replies = pipe.execute(raise_on_error=False)
    return {s: r for s, r in zip(_INFO_SECTIONS, replies, strict=True) if isinstance(r, dict) and r}


def _server_info(redis_ok: bool) -> dict[str, Any]:
    """INFO memory, commandstats and server in one round trip (free commands), as far as the server allows.

    A section the server refuses (fakeredis, a provider's proxy) is left out quietly: no error, no log, the
    gate untouched. {"unavailable": True} when Redis could not be asked at all.
    """
    if not redis_ok:
        return {"unavailable": True}
    try:
        sections: dict[str, Any] = redis_backend.call("status", _info_sections)
    except RedisUnavailable:
        return {"unavailable": redis_gate.state != CLOSED}
    return sections


def _cluster_info(redis_ok: bool) -> tuple[dict[str, Any], list[RedisNode]]:
    """INFO memory, commandstats and server from every master of the cluster (one round trip each, through that
    node's gate: a cluster pipeline refuses INFO, and INFO answers for one node), summed, and each node's figures.

    The sums count the nodes that answered; a node that did not is named in the memory gauge's note. Asked even
    when the meter could not be read (``redis_ok`` False): its keys may live on the one master that is down.
    """
    del redis_ok  # each master's own gate decides

    def masters(r: Any) -> list[str]:
        return sorted(n.name for n in r.get_primaries())

    try:
        primaries = redis_backend.call("status", masters)
    except RedisUnavailable:
        return {"unavailable": redis_gate.state != CLOSED}, []
    sent = cluster_backend.node_commands()
    gates = redis_gate.node_snapshots()
    nodes: list[RedisNode] = []
    memory = 0
    stats: Counter[str] = Counter()
    uptimes: list[int] = []
    answered = 0
    for address in primaries:

        def read(r: Any, address: str = address) -> dict[str, Any]:
            host, port = address.rsplit(":", 1)
            return _info_sections(r.get_redis_connection(r.get_node(host=host, port=int(port))))

        try:
            sections: dict[str, Any] = redis_backend.call("status", read)
        except RedisUnavailable as exc:
            gate = redis_gate.node(address).state
            nodes.append(RedisNode(address, None, None, sent.get(address, 0), gate, note=str(exc)[:200]))
            continue
        used = sections.get("memory", {}).get("used_memory")
        commandstats = sections.get("commandstats")
        billed = metering.server_billed(commandstats) if commandstats else None
        if used is not None:
            memory += int(used)
            answered += 1
        for name, value in (commandstats or {}).items():
            if isinstance(value, dict):
                stats[f"{name}:calls"] += int(value.get("calls", 0))
                stats[f"{name}:rejected_calls"] += int(value.get("rejected_calls", 0))
        uptime = sections.get("server", {}).get("uptime_in_seconds")
        if uptime is not None:
            uptimes.append(int(uptime))
        state = gates[address].state if address in gates else CLOSED
        nodes.append(RedisNode(address, None if used is None else int(used), billed, sent.get(address, 0), state))
    info: dict[str, Any] = {}
    if answered:
        info["memory"] = {"used_memory": memory}
    if stats:
        merged: dict[str, dict[str, int]] = {}
        for key, n in stats.items():
            name, field_name = key.rsplit(":", 1)
            merged.setdefault(name, {})[field_name] = n
        info["commandstats"] = merged
    if uptimes:
        info["server"] = {"uptime_in_seconds": min(uptimes)}
    missing = [n.address for n in nodes if n.used_memory is None]
    if missing:
        info["missing_nodes"] = missing
    return info, nodes


def _memory(warn: float, redis_ok: bool, info: dict[str, Any]) -> Gauge:
    limit = int(hotcache_settings.REDIS_MEMORY_LIMIT)
    used: int | None = None
    note = ""
    memory = info.get("memory")
    if info.get("unavailable") or (not redis_ok and memory is None):
        note = "Redis unavailable"
    elif memory is None:
        # A server without INFO (fakeredis, some proxies) still serves hotcache; memory is just unknown.
        note = "INFO memory not supported by this server"
    else:
        used = int(memory["used_memory"]) if "used_memory" in memory else None
        note = "" if used is not None else "INFO memory has no used_memory"
    if info.get("missing_nodes"):
        note = (note + "; " if note else "") + "without " + ", ".join(info["missing_nodes"]) + " (not answering)"
    return Gauge("Redis memory", used, limit, "REDIS_MEMORY_LIMIT", warn, note=note)


def _deployment_pools(pool: mongo.PoolStats, published: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each live process's published pool figures, with this process's own replaced by its current ones."""
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
        + (f"; {pool.lane_waits} calls waited for the healthy limit (MONGO_HEALTHY_POOL_SIZE), "
           f"{pool.lane_wait_ms} ms in all, {pool.lane_overflows} went ahead, {pool.lane_refusals} failed with "
           "MONGO_HEALTHY_MAX_OVERFLOW reached" if pool.lane_waits else "")
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
        pool_limit=Gauge("MongoDB pool (this process)", pool_value, max_pool, "MONGO_MAX_POOL_SIZE", warn, pool_note),
        server_limit=Gauge(
            "MongoDB server connections", server_value, server_cap, "MONGO_SERVER_CONNECTION_LIMIT", warn, server_note
        ),
        server_source=source,
        server_status=status,
    )
