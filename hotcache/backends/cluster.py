"""Redis Cluster as hotcache's Redis: the client (HOTCACHE['REDIS_CLUSTER']), its own errors, and its nodes.

redis-py's ``RedisCluster`` keeps one connection pool per node. hotcache builds it from HOTCACHE['REDIS_URL'] with
the single-server client's settings (short timeouts, no retries below the health gate, TLS and credentials from the
URL) and its pools use the metered connection class, so the meter counts commands, round trips and billed
commands per node as it does for one server. redis-py's ``rediss://`` parsing sets ``SSLConnection`` over any
``connection_class`` passed in, so the metered class is applied by the pool class instead.

Some of the cluster client's errors are not ``RedisError`` subclasses (``RedisClusterException``: no node
reachable, a slot no node serves, keys of one call on different slots, a command refused in a cluster
pipeline): ``hotcache.backends.errors.classify`` sorts them for ``hotcache.backends.redis.call``, the one boundary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.commands.policies import (  # type: ignore[attr-defined]  # redis-py re-exports them without __all__
    BasePolicyResolver,
    CommandPolicies,
    PolicyResolver,
    RequestPolicy,
    ResponsePolicy,
    StaticPolicyResolver,
)
from redis.exceptions import AskError, MovedError, RedisClusterException, RedisError, TryAgainError
from redis.retry import Retry

__all__ = [
    "ClusterReport",
    "HotcacheCluster",
    "NodeReport",
    "build",
    "describe",
    "send_once",
    "single_server_on_cluster",
    "url_problems",
]

SLOTS = 16384
SCHEMES = ("redis", "rediss")


def url_problems(url: object, *, cluster: bool) -> list[str]:
    """What is wrong with ``url`` as hotcache's Redis URL ([] when nothing is), each naming the fix."""
    if not isinstance(url, str) or "://" not in url:
        return [f"{str(url)[:60]!r} is not a Redis URL: use redis://host:port/0 or rediss://host:port/0 (TLS)."]
    scheme = url.split("://", 1)[0].lower()
    if scheme not in (*SCHEMES, "unix"):
        return [f"the scheme {scheme!r} is not a Redis scheme: use redis://, rediss:// (TLS) or unix://."]
    if not cluster:
        return []
    if scheme == "unix":
        return ["a cluster is reached over TCP: use redis:// or rediss://, not unix://."]
    parts = urlsplit(url)
    path_db = parts.path.strip("/")
    query_db = parse_qs(parts.query).get("db", [""])[0]
    problems = []
    for db in (path_db, query_db):
        if db and db != "0":
            problems.append(f"database {db} is in the URL, but a Redis Cluster has only database 0: end it with /0.")
    return problems


def _metered_pool_class(metered_class: Callable[[type], type]) -> type[redis.ConnectionPool]:
    class MeteredPool(redis.ConnectionPool):
        """A node's pool whose connections are the metered subclass of the class the URL asks for."""

        def __init__(self, connection_class: type = redis.Connection, **kwargs: Any) -> None:
            super().__init__(connection_class=metered_class(connection_class), **kwargs)

    return MeteredPool


_KEYED = CommandPolicies(request_policy=RequestPolicy.DEFAULT_KEYED, response_policy=ResponsePolicy.DEFAULT_KEYED)


class _ScriptsByTheirKeys(BasePolicyResolver):
    """EVAL / EVALSHA are routed by their keys (redis-py reads them from the command locally).

    Without this, redis-py's cluster pipeline asks the server (COMMAND GETKEYS, one round trip) for every
    script it queues, only to learn that the script has keys: measured, 12 scripts took 15 round trips.
    """

    def __init__(self, fallback: PolicyResolver | None = None) -> None:
        super().__init__({"core": {"eval": _KEYED, "evalsha": _KEYED}}, fallback or StaticPolicyResolver())

    def with_fallback(self, fallback: PolicyResolver) -> PolicyResolver:
        return _ScriptsByTheirKeys(fallback)


class HotcacheCluster(RedisCluster):
    """RedisCluster whose pipelines route scripts as the client does (redis-py does not pass its policy resolver
    on to ClusterPipeline; tests/cluster/test_pipelines.py counts the round trips, so a change shows)."""

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]  # unannotated in redis-py
        pipe._policy_resolver = self._policy_resolver
        return pipe


def build(
    url: str,
    *,
    socket_timeout: float,
    connect_timeout: float,
    metered_class: Callable[[type], type],
    max_connections: int = 50,
) -> RedisCluster:
    """hotcache's cluster client for ``url`` (any node of the cluster; the others are discovered)."""
    return HotcacheCluster(
        url=url,
        connection_pool_class=_metered_pool_class(metered_class),
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry_on_timeout=False,
        client_name="hotcache",
        max_connections=max_connections,
        # One attempt per call: the health gate decides about retries (a retried INCR would count twice).
        # MOVED and ASK redirections are still followed: they are routing, not failures.
        retry=Retry(NoBackoff(), 0),
        # A slot no node serves fails the calls for that slot only, not the client.
        require_full_coverage=False,
        policy_resolver=_ScriptsByTheirKeys(),
    )


def close(client: Any) -> None:
    """Close every node's pool (RedisCluster) or the pool (Redis)."""
    if isinstance(client, RedisCluster):
        client.close()
    else:
        client.connection_pool.disconnect()


@dataclass(slots=True)
class NodeReport:
    """One node of the cluster as hotcache_check reports it."""

    address: str
    role: str  # "master" | "replica"
    slots: list[list[int]] = field(default_factory=list)  # [[first, last], ...] a master serves
    master: str = ""  # a replica's master (host:port)
    rtt_ms: float | None = None
    ok: bool = True
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address, "role": self.role, "ok": self.ok}
        if self.role == "master":
            out["slots"] = self.slots
        else:
            out["master"] = self.master
        out["rtt_ms"] = self.rtt_ms
        if self.error:
            out["error"] = self.error
        return out


@dataclass(slots=True)
class ClusterReport:
    nodes: list[NodeReport]
    slots_covered: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "slots_covered": self.slots_covered,
            "masters": sum(1 for n in self.nodes if n.role == "master"),
            "replicas": sum(1 for n in self.nodes if n.role == "replica"),
            "nodes": [n.as_dict() for n in self.nodes],
            "problems": self.problems,
        }


def describe(client: RedisCluster, samples: int = 3) -> ClusterReport:
    """Every node the cluster knows (CLUSTER SHARDS through the client), its role, slots and round trip.

    A node that does not answer PING, a node the cluster marks as failed and any slot no live master serves are
    problems (hotcache_check fails on them).
    """
    shards = client.execute_command("CLUSTER SHARDS")
    nodes: list[NodeReport] = []
    covered = 0
    problems: list[str] = []
    for shard in shards:
        shard = _as_dict(shard)
        ranges = [int(x) for x in shard.get("slots", [])]
        slot_ranges = [[ranges[i], ranges[i + 1]] for i in range(0, len(ranges), 2)]
        members = [_as_dict(n) for n in shard.get("nodes", [])]
        master_address = ""
        for member in members:
            if _text(member.get("role")) == "master":
                master_address = f"{_text(member.get('ip'))}:{member.get('port')}"
        master_alive = False
        for member in members:
            address = f"{_text(member.get('ip'))}:{member.get('port')}"
            role = "master" if _text(member.get("role")) == "master" else "replica"
            node = NodeReport(
                address, role, slot_ranges if role == "master" else [], master_address if role != "master" else ""
            )
            health = _text(member.get("health"))
            _probe(client, node, samples)
            if health == "fail":
                node.ok = False
                node.error = node.error or "the cluster marks this node as failed"
            if not node.ok:
                problems.append(f"{role} {address} is unreachable: {node.error}")
            elif role == "master":
                master_alive = True
            nodes.append(node)
        if master_alive:
            covered += sum(high - low + 1 for low, high in slot_ranges)
    if covered < SLOTS:
        problems.append(f"{SLOTS - covered} of {SLOTS} slots have no live master: their keys cannot be served.")
    nodes.sort(key=lambda n: (n.role != "master", n.address))
    return ClusterReport(nodes, covered, problems)


def _probe(client: RedisCluster, node: NodeReport, samples: int) -> None:
    host, port = node.address.rsplit(":", 1)
    target = client.get_node(host=host, port=int(port))
    owned = None
    if target is not None and target.redis_connection is not None:
        conn = target.redis_connection
    else:
        # A node the client does not route to (a replica): a one-off client with the same connection settings.
        primary = client.get_primaries()[0].redis_connection
        if primary is None:
            node.ok, node.error = False, "the client has no connection settings to probe it with"
            return
        pool = primary.connection_pool
        kwargs = {**pool.connection_kwargs, "host": host, "port": int(port)}
        owned = conn = redis.Redis(
            connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        )
    timings = []
    try:
        for _ in range(samples):
            start = time.perf_counter()
            conn.ping()
            timings.append((time.perf_counter() - start) * 1000)
    except (RedisError, RedisClusterException, OSError) as exc:
        node.ok, node.error = False, f"{type(exc).__name__}: {exc}"
        return
    finally:
        if owned is not None:
            owned.close()
    timings.sort()
    node.rtt_ms = round(timings[len(timings) // 2], 3)


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {_text(k): v for k, v in value.items()}
    items = list(value)
    return {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value if value is not None else "")


def single_server_on_cluster(info_cluster: dict[str, Any]) -> bool:
    """Whether INFO cluster of a single-server client's Redis says it is a cluster node (cluster_enabled:1)."""
    return str(info_cluster.get("cluster_enabled", "0")) == "1"


_NOT_RUN = (MovedError, AskError, TryAgainError)  # the node refused before running the command


def send_once(client: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Each command sent once to the node of its keys, all nodes written before any is read (one round trip per
    node, in parallel); replies in order, a command's error in its place.

    redis-py's cluster pipeline re-sends, one by one, every command of a node whose connection failed or timed
    out: a script that may have run would run twice (an INCR counted twice, a give-back given twice). Here a
    command is re-sent only when its node answered that it did not run it (MOVED, ASK, TRYAGAIN), through the
    client, which follows the redirection.
    """
    pipe = client.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command(*args)
    try:
        replies = list(
            pipe.send_cluster_commands(
                pipe._execution_strategy.command_queue, raise_on_error=False, allow_redirections=False
            )
        )
    finally:
        pipe.reset()
    for i, reply in enumerate(replies):
        if isinstance(reply, _NOT_RUN):
            try:
                replies[i] = client.execute_command(*commands[i])
            except RedisError as exc:
                replies[i] = exc
    return replies
