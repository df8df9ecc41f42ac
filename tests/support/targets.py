"""Round-trip figures on either Redis target (the single server, or HOTCACHE_TEST_REDIS_TARGET=cluster).

A pipeline is one round trip on one server and one per master it reaches on a Redis Cluster (in parallel):
a test states its figure as ``per_master(n)`` where the single server's ``n`` is a pipeline's, so the single
server's assertion stays exactly what it was. ``warm_every_master`` opens hotcache's connection to every node
(their handshakes are not a feature's cost; on one server the test's own warm-up does this) and caches the
given scripts there, as earlier calls have on a long-running server.
"""

from __future__ import annotations

from typing import Any

from redis.cluster import RedisCluster

from hotcache.backends import redis as redis_backend


def masters() -> int:
    """How many Redis servers hotcache's client writes to: 1, or the cluster's masters."""
    return int(redis_backend.call("test", lambda r: len(r.get_primaries()) if isinstance(r, RedisCluster) else 1))


def per_master(n: int) -> int:
    """``n`` round trips on the single server; ``n`` per master on the cluster (each pipeline reaches every master)."""
    return n * masters()


def warm_every_master(*scripts: redis_backend.Script) -> None:
    """Connect hotcache's client to every master and load ``scripts`` there (not counted by a test's figures)."""

    def warm(r: Any) -> None:
        if isinstance(r, RedisCluster):
            r.ping(target_nodes=r.get_primaries())
        else:
            r.ping()
        for script in scripts:
            r.script_load(script.body)

    redis_backend.call("test", warm)


def pipelined(n: int) -> range:
    """The round trips ``n`` pipelines may take: exactly ``n`` on one server; on a cluster each reaches the masters
    holding its keys (1 to all), in parallel. Assert ``measured in pipelined(n)``."""
    return range(n, n * masters() + 1)


def on_a_cluster() -> bool:
    """Whether hotcache's client is a Redis Cluster client (the survey target, or a test's own cluster)."""
    return bool(redis_backend.call("test", lambda r: isinstance(r, RedisCluster)))


def nodes_holding(*keys: str) -> int:
    """How many servers hold ``keys``: 1 on one server; on a cluster the distinct masters (the round trips of one
    send of commands on those keys, in parallel)."""

    def count(r: Any) -> int:
        return len({r.get_node_from_key(k).name for k in keys}) if isinstance(r, RedisCluster) else 1

    return int(redis_backend.call("test", count))
