"""manage.py hotcache_check: can hotcache reach its stores? Redis ping, latency and Lua; MongoDB ping; pool settings."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from redis.exceptions import RedisError

from hotcache.backends import cluster, mongo, redis_profile
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import BackendUnavailable, MongoWriteError


def check_connections(samples: int = 5) -> dict[str, Any]:
    """Probe Redis and MongoDB; returns a report dict with 'ok' and, per store, 'ok', figures and 'error'."""
    alias = hotcache_settings.REDIS_ALIAS
    url = hotcache_settings.REDIS_URL
    location = url or settings.CACHES.get(alias, {}).get("LOCATION", "?")
    source = (
        "HOTCACHE['REDIS_URL']" if url else f"CACHES[{alias!r}]['LOCATION'], the alias named by HOTCACHE['REDIS_ALIAS']"
    )
    report: dict[str, Any] = {"redis": {"alias": None if url else alias, "location": _redact(str(location))}}
    report["redis"]["mode"] = "cluster" if hotcache_settings.REDIS_CLUSTER else "single"
    # A fresh client and gate: the check must try, not trust a cached "down".
    redis_backend.reset()
    try:
        timings = []
        for _ in range(samples):
            start = time.perf_counter()
            redis_backend.call("status", lambda r: r.ping())
            timings.append((time.perf_counter() - start) * 1000)
        lua = redis_backend.call("status", lambda r: redis_backend.eval_lua(r, "return redis.call('TIME')[1]"))
        try:
            version = _version(redis_backend.server_info("server"))
        except BackendUnavailable:  # a server without INFO (fakeredis) still serves hotcache
            version = "?"
        report["redis"].update(
            ok=True,
            rtt_ms_median=round(statistics.median(timings), 3),
            rtt_ms_max=round(max(timings), 3),
            lua=bool(lua),
            version=version,
            socket_timeout_s=hotcache_settings.REDIS_SOCKET_TIMEOUT,
        )
        report["redis"].update(_profile())
        report["redis"].update(_cluster_state())
    except BackendUnavailable as exc:
        report["redis"].update(
            ok=False,
            error=f"Redis at {_redact(str(location))} is unreachable ({exc.__cause__ or exc}). It comes from {source}.",
        )
    url = hotcache_settings.MONGO_URL
    report["mongodb"] = {
        "url": _redact(str(url)),
        "database": mongo.database_name(),
        "max_pool_size": hotcache_settings.MONGO_MAX_POOL_SIZE,
        "healthy_pool_size": hotcache_settings.MONGO_HEALTHY_POOL_SIZE,  # while Redis is healthy
        "healthy_max_overflow": hotcache_settings.MONGO_HEALTHY_MAX_OVERFLOW,  # more once calls waited, then fail
        "wait_queue_timeout_ms": hotcache_settings.MONGO_WAIT_QUEUE_TIMEOUT_MS,
        "server_selection_timeout_ms": hotcache_settings.MONGO_SERVER_SELECTION_TIMEOUT_MS,
    }
    try:
        rtt = mongo.ping()
        report["mongodb"].update(ok=True, rtt_ms=round(rtt * 1000, 3), driver=mongo.url_scheme(str(url)))
    except (BackendUnavailable, MongoWriteError) as exc:
        report["mongodb"].update(
            ok=False,
            error=f"MongoDB at {_redact(str(url))} is unreachable ({exc}). It comes from HOTCACHE['MONGO_URL'].",
        )
    report["ok"] = bool(report["redis"]["ok"] and report["mongodb"]["ok"])
    return report


def _first_node(info: dict[str, Any]) -> dict[str, Any]:
    """INFO of one server (a cluster client answers with one INFO per node: the first node's)."""
    if info and all(isinstance(v, dict) for v in info.values()):
        return next(iter(info.values()))
    return info


def _version(info: dict[str, Any]) -> str:
    return str(_first_node(info).get("redis_version", "?"))


def _cluster_state() -> dict[str, Any]:
    """For a cluster: each node, its role, slots and round trip; not ok if a slot is unserved or a node down.
    For a single server: not ok if that server is a cluster node (the client would get MOVED for most keys)."""
    if not hotcache_settings.REDIS_CLUSTER:
        mismatch = redis_backend.cluster_mode_mismatch()
        return {} if mismatch is None else {"ok": False, "error": mismatch}
    try:
        state = redis_backend.call("status", cluster.describe)  # type: ignore[arg-type]  # REDIS_CLUSTER: a RedisCluster
    except BackendUnavailable as exc:
        return {"ok": False, "error": f"could not read the cluster's nodes (CLUSTER SHARDS): {exc}"}
    out: dict[str, Any] = {"cluster": state.as_dict()}
    if not state.ok:
        out.update(ok=False, error="Redis Cluster: " + "; ".join(state.problems))
    return out


def _profile() -> dict[str, Any]:
    """Connect, TLS handshake and round-trip times against the timeouts; the eviction policy (run-time only)."""
    out: dict[str, Any] = {}
    try:
        timings = redis_profile.measure()
    except (OSError, RedisError) as exc:
        out["timing"] = {"error": f"could not time a new connection: {exc}"}
    else:
        out["timing"] = timings.as_dict() if timings is not None else None
    try:
        policy = _eviction_policy()
    except BackendUnavailable:
        policy = "?"
    eviction = redis_profile.eviction_advice(policy)
    out["eviction"] = {"maxmemory_policy": eviction.policy, "ok": eviction.ok, "advice": eviction.advice}
    return out


def _eviction_policy() -> str:
    """maxmemory-policy of the server, or on a cluster of every master (each has its own): the first that is not
    noeviction, with the masters that have it, so one misconfigured node is not hidden behind the others."""
    if not hotcache_settings.REDIS_CLUSTER:
        return str(_first_node(redis_backend.server_info("memory")).get("maxmemory_policy", "?"))
    policies = redis_backend.call(
        "status",
        lambda r: cluster.per_master(r, lambda n: n.info("memory").get("maxmemory_policy", "?")),  # type: ignore[arg-type]
    )
    worst = sorted({str(p) for p in policies.values()}, key=lambda p: p == "noeviction")
    if not worst:
        return "?"
    if len(worst) == 1:
        return worst[0]
    nodes = ", ".join(a for a, p in sorted(policies.items()) if p == worst[0])
    return f"{worst[0]} (on {nodes})"


def _redact(url: str) -> str:
    """Hide the password in a URL."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


class Command(BaseCommand):
    help = "Check hotcache's connections: Redis ping, round-trip latency and Lua support; MongoDB ping; pool settings."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        report = check_connections()
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            r, m = report["redis"], report["mongodb"]
            if r["ok"]:
                self.stdout.write(
                    f"Redis    OK   {r['location']}  v{r['version']}  rtt {r['rtt_ms_median']} ms "
                    f"(max {r['rtt_ms_max']})  lua {'yes' if r['lua'] else 'NO'}"
                )
                self._write_profile(r)
            else:
                self.stdout.write(f"Redis    FAIL {r['error']}")
            self._write_cluster(r.get("cluster"))
            if m["ok"]:
                self.stdout.write(
                    f"MongoDB  OK   {m['url']} db={m['database']}  rtt {m['rtt_ms']} ms  "
                    f"maxPoolSize={m['max_pool_size']} waitQueueTimeoutMS={m['wait_queue_timeout_ms']}"
                )
            else:
                self.stdout.write(f"MongoDB  FAIL {m['error']}")
        if not report["ok"]:
            failed = [name for name in ("redis", "mongodb") if not report[name]["ok"]]
            raise CommandError(f"hotcache cannot reach: {', '.join(failed)}")

    def _write_cluster(self, state: dict[str, Any] | None) -> None:
        if not state:
            return
        self.stdout.write(
            f"Cluster  {'OK  ' if state['ok'] else 'FAIL'} {state['masters']} masters, {state['replicas']} replicas, "
            f"{state['slots_covered']} of {cluster.SLOTS} slots served"
        )
        for node in state["nodes"]:
            where = (
                "slots " + ",".join(f"{low}-{high}" for low, high in node["slots"])
                if node["role"] == "master"
                else f"replica of {node['master']}"
            )
            rtt = f"rtt {node['rtt_ms']} ms" if node["rtt_ms"] is not None else f"DOWN ({node.get('error', '')})"
            self.stdout.write(f"         {node['role']:<7} {node['address']:<21} {where:<22} {rtt}")

    def _write_profile(self, r: dict[str, Any]) -> None:
        t = r.get("timing")
        if t and "error" in t:
            self.stdout.write(f"Timing   WARN {t['error']}")
        elif t:
            tls = "no TLS"
            if t["tls_handshake_ms"] is not None:
                tls = f"TLS handshake {t['tls_handshake_ms']} ms (+ {t['tls_client_setup_ms']} ms client CPU)"
            connect = "unix socket" if t["connect_ms"] is None else f"connect {t['connect_ms']} ms"
            fits = t["socket_timeout_fits"] and t["connect_timeout_fits"]
            self.stdout.write(
                f"Timing   {'OK  ' if fits else 'WARN'} {connect}, {tls}, new connection {t['setup_ms']} ms, "
                f"round trip {t['rtt_ms_median']} ms (max {t['rtt_ms_max']}); timeouts: socket "
                f"{t['socket_timeout_s']} s, connect {t['connect_timeout_s']} s "
                f"{'fit' if fits else 'do not fit'} (rule: >= {redis_profile.TIMEOUT_MULTIPLE} x measured)"
            )
            if t["advice"]:
                self.stdout.write(f"         {t['advice']}")
        e = r["eviction"]
        self.stdout.write(f"Eviction {'OK  ' if e['ok'] else 'WARN'} maxmemory-policy {e['maxmemory_policy']}")
        if e["advice"]:
            self.stdout.write(f"         {e['advice']}")
