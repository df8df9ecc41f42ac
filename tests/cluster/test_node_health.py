"""Health per node on a real Redis Cluster (issue 18): a dead master sends only its slots' work to the fallbacks,
the other masters keep serving, and once its replica is promoted its slots return to Redis by themselves;
MOVED and ASK are followed; CLUSTERDOWN is retried within the call's budget, then counts as that node's state;
NOSCRIPT on a promoted replica loads the script once."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
import redis
import redis.cluster
from redis.crc import key_slot

from hotcache.backends import cluster as cluster_backend
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import CLOSED, OPEN, HealthGate, redis_gate
from hotcache.exceptions import RedisUnavailable
from tests.support.redis_cluster import RedisClusterNodes


def _use(settings: Any, nodes: RedisClusterNodes, **extra: Any) -> None:
    settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_URL": nodes.url, "REDIS_CLUSTER": True, **extra}


def _key_per_master(nodes: RedisClusterNodes, prefix: str) -> dict[int, str]:
    """One key on each master: {master port: key}."""
    out: dict[int, str] = {}
    for i in range(10_000):
        key = f"{prefix}:nh:{{{i}}}"
        port = nodes.master_for_slot(key_slot(key.encode())).port
        out.setdefault(port, key)
        if len(out) == nodes.masters:
            return out
    raise AssertionError("no key found for every master")


def _get(key: str) -> Any:
    return redis_backend.call("status", lambda r: r.get(key))


def _replicated(nodes: RedisClusterNodes) -> None:
    """Every master's writes reached its replica (WAIT), so a promoted replica holds them."""
    for info in nodes.masters_info():
        with nodes.node(info.port).client() as c:
            assert c.execute_command("WAIT", 1, 5000) >= 1


def test_a_dead_master_sends_only_its_slots_to_the_fallback(settings, own_redis_cluster, key_prefix):
    nodes = own_redis_cluster
    _use(settings, nodes)
    keys = _key_per_master(nodes, key_prefix)
    for key in keys.values():
        redis_backend.call("status", lambda r, k=key: r.set(k, "v", ex=600))
    _replicated(nodes)
    dead_port, dead_key = next(iter(keys.items()))
    dead, replicas = nodes.kill_master(key_slot(dead_key.encode()))
    assert dead.port == dead_port

    with pytest.raises(RedisUnavailable) as first:
        _get(dead_key)
    assert not first.value.gate_open  # it met the dead node itself
    dead_gate = redis_gate.node(dead.address).snapshot()
    assert dead_gate.state == OPEN  # a refused connection opens the node's gate at once
    assert redis_gate.state == CLOSED  # not the cluster's

    served = {port: 0 for port in keys}
    for _ in range(20):
        for port, key in keys.items():
            try:
                assert _get(key) == b"v"
                served[port] += 1
            except RedisUnavailable as exc:
                assert port == dead_port and exc.gate_open  # turned away by the node's gate: nothing sent
    assert served == {port: 0 if port == dead_port else 20 for port in keys}
    snap = redis_gate.snapshot()  # what the reports show: the dead node's gate, named after it
    assert snap.state == OPEN
    assert dead.address in snap.name
    assert snap.reason().startswith(f"Redis node {dead.address} unavailable")

    promoted = nodes.wait_for_promotion(dead, replicas)
    # The next call turned away by the dead node's gate re-reads the slot table (at most once per second); from
    # then on the slots go to the promoted replica, whose gate is closed, without waiting for the cool-down.
    recovered_after = None
    for attempt in range(1, 5001):
        try:
            assert _get(dead_key) == b"v"
        except RedisUnavailable:
            continue
        recovered_after = attempt
        break
    assert recovered_after is not None, "the dead master's slots never returned to Redis"
    client = redis_backend.get_client()
    assert client.get_node_from_key(dead_key).name == promoted.address
    assert redis_gate.snapshot().state == CLOSED  # the dead node left the routing table: nothing reported down
    assert set(redis_gate.node_snapshots()) >= {promoted.address}


def test_calls_that_only_reach_live_masters_never_ask_the_dead_ones_gate(settings, own_redis_cluster, key_prefix):
    """A pipeline over two live masters succeeds while a third is dead; one over the dead one falls back whole."""
    nodes = own_redis_cluster
    _use(settings, nodes)
    keys = _key_per_master(nodes, key_prefix)
    (dead_port, dead_key), *live = list(keys.items())
    nodes.kill_master(key_slot(dead_key.encode()))

    def read(names: list[str]) -> Any:
        def fn(r: Any) -> Any:
            pipe = r.pipeline(transaction=False)
            for name in names:
                pipe.get(name)
            return pipe.execute()

        return redis_backend.call("status", fn)

    assert read([key for _, key in live]) == [None, None]
    with pytest.raises(RedisUnavailable):
        read([dead_key, live[0][1]])
    assert redis_gate.node(f"127.0.0.1:{dead_port}").state == OPEN
    assert read([key for _, key in live]) == [None, None]
    assert all(redis_gate.node(f"127.0.0.1:{port}").state == CLOSED for port, _ in live)


def test_noscript_on_a_promoted_replica_loads_the_script_once(settings, own_redis_cluster, key_prefix):
    nodes = own_redis_cluster
    _use(settings, nodes)
    key = f"{key_prefix}:nh:{{script}}"
    lua = _InlineScript("return redis.call('INCR', KEYS[1])")
    assert redis_backend.call("status", lambda r: lua(r, [key])) == 1
    _replicated(nodes)
    dead, replicas = nodes.kill_master(key_slot(key.encode()))
    nodes.wait_for_promotion(dead, replicas)
    redis_backend.get_client().nodes_manager.initialize()  # as the first call turned away does (tested above)

    with _sent() as sent:
        assert redis_backend.call("status", lambda r: lua(r, [key])) == 2  # the replica had the count
    # NOSCRIPT once, then the body, which the new master caches:
    assert [n for n in sent if n.startswith("EVAL")] == ["EVALSHA", "EVAL"]
    with _sent() as sent:
        assert redis_backend.call("status", lambda r: lua(r, [key])) == 3
    assert [n for n in sent if n.startswith("EVAL")] == ["EVALSHA"]


class _InlineScript(redis_backend.Script):
    """redis_backend.Script for an inline body (EVALSHA, EVAL once on NOSCRIPT), as the feature scripts run."""

    def __init__(self, source: str) -> None:
        self.name = "inline"
        self.body = redis_backend.wrap_lua(source)
        self.sha = hashlib.sha1(self.body.encode(), usedforsecurity=False).hexdigest()


@contextmanager
def _sent() -> Iterator[list[str]]:
    """The name of every single command hotcache's connections send meanwhile (cluster nodes' included)."""
    metered = redis_backend._metered_class(redis.Connection)
    real = metered.send_command
    names: list[str] = []

    def send(conn: Any, *args: Any, **kwargs: Any) -> None:
        names.append(str(args[0]).upper())
        real(conn, *args, **kwargs)

    with mock.patch.object(metered, "send_command", send):
        yield names


def test_moved_and_ask_are_followed(settings, own_redis_cluster, key_prefix):
    """A slot migrated by hand: ASK while it moves (a key not yet on the source is served by the target), MOVED once
    it has moved (the client's stale table is corrected). Every call is answered by Redis; no gate opens."""
    nodes = own_redis_cluster
    _use(settings, nodes)
    key = f"{key_prefix}:nh:{{moving}}"
    new_key = f"{key_prefix}:nh:{{moving}}:new"
    slot = key_slot(key.encode())
    redis_backend.call("status", lambda r: r.set(key, "old", ex=600))
    view = nodes.topology()
    source = nodes.master_for_slot(slot)
    target_info = next(n for n in view if n.role == "master" and n.port != source.port and not n.failed)
    source_id = next(n.node_id for n in view if n.port == source.port)
    target = nodes.node(target_info.port)
    with target.client() as t, source.client() as s:
        t.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_info.node_id)
        # ASK: a key the source does not hold, in a migrating slot, is for the target.
        assert redis_backend.call("status", lambda r: r.set(new_key, "new", ex=600)) is True
        assert t.execute_command("ASKING") and t.get(new_key) == b"new"
        s.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", key)
        assert redis_backend.call("status", lambda r: r.get(key)) == b"old"  # ASK again: the key moved
        for info in nodes.masters_info():
            with nodes.node(info.port).client() as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_info.node_id)
    client = redis_backend.get_client()
    assert client.get_node_from_key(key).port == source.port  # the client's table is stale
    assert redis_backend.call("status", lambda r: r.get(key)) == b"old"  # MOVED, followed
    assert client.get_node_from_key(key).port == target.port  # and the table corrected
    assert redis_gate.snapshot().state == CLOSED
    assert all(s.state == CLOSED and s.opens == 0 for s in redis_gate.node_snapshots().values())


def test_clusterdown_is_retried_within_the_budget_then_counts_for_that_node_only(
    settings, own_redis_cluster, key_prefix, monkeypatch, clock
):
    """A node that answers CLUSTERDOWN (here: it no longer serves the key's slot) is asked again every RETRY_PAUSE
    while the call's budget (REDIS_SOCKET_TIMEOUT) lasts, not after redis-py's 0.25 s sleep and topology refresh;
    once it answers, the call succeeds; past the budget it is that node's server state, not the cluster's."""
    nodes = own_redis_cluster
    _use(settings, nodes, REDIS_SOCKET_TIMEOUT=0.3)
    key = f"{key_prefix}:nh:{{down}}"
    slot = key_slot(key.encode())
    redis_backend.call("status", lambda r: r.set(key, "v", ex=600))
    owner = nodes.master_for_slot(slot)
    pauses: list[float] = []
    heal_after: list[int] = [2]

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        clock.advance(seconds)
        if len(pauses) == heal_after[0]:
            with owner.client() as c:
                c.execute_command("CLUSTER", "ADDSLOTS", slot)

    monkeypatch.setattr(cluster_backend.HotcacheCluster, "_pause", staticmethod(pause))
    with owner.client() as c:
        c.execute_command("CLUSTER", "DELSLOTS", slot)  # the owner answers CLUSTERDOWN for it
    with _sent() as sent:
        assert _get(key) == b"v"
    assert pauses == [cluster_backend.RETRY_PAUSE] * 2  # healed during the second pause
    assert sent == ["GET"] * 3  # asked three times: no topology refresh (CLUSTER SLOTS) between them
    assert redis_gate.node(owner.address).snapshot().consecutive_failures == 0

    pauses.clear()
    heal_after[0] = 10_000  # never: the budget runs out
    with owner.client() as c:
        c.execute_command("CLUSTER", "DELSLOTS", slot)
    with pytest.raises(RedisUnavailable) as refused:
        _get(key)
    assert refused.value.answered
    assert len(pauses) in (5, 6)  # 0.3 s of budget, 0.05 s apart (float steps): never redis-py's 0.25 s sleep
    node = redis_gate.node(owner.address).snapshot()
    assert node.consecutive_failures == 1 and "CLUSTERDOWN" in node.last_error
    assert redis_gate.state == CLOSED
    with owner.client() as c:
        c.execute_command("CLUSTER", "ADDSLOTS", slot)
    assert _get(key) == b"v"


def test_a_node_gate_lets_exactly_one_probe_through_after_its_cooldown(settings, own_redis_cluster, key_prefix, clock):
    nodes = own_redis_cluster
    _use(settings, nodes, HEALTH_COOLDOWN=5.0)
    keys = _key_per_master(nodes, key_prefix)
    dead_port, dead_key = next(iter(keys.items()))
    nodes.node(dead_port).kill()  # no replica takes over in this test's time: the clock is frozen
    with pytest.raises(RedisUnavailable):
        _get(dead_key)
    gate = redis_gate.node(f"127.0.0.1:{dead_port}")
    with pytest.raises(RedisUnavailable) as turned_away:
        _get(dead_key)
    assert turned_away.value.gate_open
    clock.advance(5.0)
    with pytest.raises(RedisUnavailable) as probe:
        _get(dead_key)
    assert not probe.value.gate_open  # the probe went to the node (refused again)
    assert gate.state == OPEN and gate.snapshot().opens == 1  # a failed probe re-opens, not a new opening


@pytest.fixture(params=["full-coverage-yes", "full-coverage-no"])
def stream_cluster(request: pytest.FixtureRequest) -> Iterator[RedisClusterNodes]:
    """A cluster of the test's own, with redis-server's default ``cluster-require-full-coverage yes`` (every node
    answers CLUSTERDOWN while a dead master's slots wait for its replica) or ``no`` (the others keep serving)."""
    extra = ("--cluster-require-full-coverage", "no") if request.param.endswith("no") else ()
    nodes = RedisClusterNodes(extra_args=extra)
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.close()


def test_a_master_killed_under_a_stream_of_calls(settings, stream_cluster, key_prefix, request, monkeypatch):
    """INCR on one key per master, round after round; one master is SIGKILLed after 50 rounds. The other masters'
    calls stay on Redis (all of them with full coverage off; with it on, the nodes refuse every key with CLUSTERDOWN
    for the moment between the dead master's FAIL and its replica's promotion); the dead master's calls fall back;
    after the promotion its slots return to Redis by themselves. The figures are printed (run with -s)."""
    import json
    import time

    nodes = stream_cluster
    _use(settings, nodes)
    retries: list[float] = []  # CLUSTERDOWN / TRYAGAIN refusals asked again within the call's budget
    real_pause = cluster_backend.HotcacheCluster._pause
    monkeypatch.setattr(
        cluster_backend.HotcacheCluster, "_pause", staticmethod(lambda s: (retries.append(s), real_pause(s)))
    )
    keys = _key_per_master(nodes, key_prefix)
    dead_port, dead_key = next(iter(keys.items()))
    served = dict.fromkeys(keys, 0)
    fell_back = dict.fromkeys(keys, 0)
    turned_away = 0
    killed_at = recovered_at = rerouted_at = None
    in_a_row = rounds = 0
    deadline = time.monotonic() + 120
    while in_a_row < 50:
        assert time.monotonic() < deadline, f"no recovery: served {served}, fell back {fell_back}"
        rounds += 1
        if rounds == 51:
            killed_at = time.monotonic()
            nodes.node(dead_port).kill()
        for port, key in keys.items():
            try:
                redis_backend.call("status", lambda r, k=key: r.incr(k))
            except RedisUnavailable as exc:
                fell_back[port] += 1
                turned_away += exc.gate_open
                if port == dead_port:
                    in_a_row = 0
                continue
            served[port] += 1
            if rerouted_at is None and killed_at is not None:
                if redis_backend.get_client().get_node_from_key(dead_key).port != dead_port:
                    rerouted_at = time.monotonic()  # the client's slot table names the promoted replica
            if port == dead_port and killed_at is not None:
                recovered_at = recovered_at or time.monotonic()
                in_a_row += 1
    assert killed_at is not None and recovered_at is not None and rerouted_at is not None
    live = [p for p in keys if p != dead_port]
    raw = redis.cluster.RedisCluster.from_url(nodes.url)
    try:
        for port in live:  # every INCR Redis acknowledged on a live master is there: nothing lost, none twice
            assert int(raw.get(keys[port])) == served[port]
    finally:
        raw.close()
    figures = {
        "config": request.node.callspec.params["stream_cluster"],
        "rounds": rounds,
        "live_masters_served": sum(served[p] for p in live),
        "live_masters_fell_back": sum(fell_back[p] for p in live),
        "dead_master_served": served[dead_port],
        "dead_master_fell_back": fell_back[dead_port],
        "turned_away_by_a_gate": turned_away,
        "clusterdown_retries": len(retries),
        "rerouted_after_seconds": round(rerouted_at - killed_at, 2),
        "recovery_seconds": round(recovered_at - killed_at, 2),
        "gate_opens": redis_gate.snapshot().opens,
        "process_gate_opens": HealthGate.snapshot(redis_gate).opens,
    }
    print("stream figures:", json.dumps(figures))
    assert fell_back[dead_port] > 0
    if figures["config"] == "full-coverage-no":
        assert figures["live_masters_fell_back"] == 0
    assert redis_gate.state == CLOSED


def test_cluster_proxies_take_one_node_or_the_whole_cluster_down_for_hotcache(
    settings, redis_cluster, key_prefix, monkeypatch, clock
):
    """The feature suites' redis_proxy on the cluster target: down(port) is a dead master without a failover
    (only its slots fall back), down() the whole cluster gone; up() and the cool-down bring Redis back."""
    from tests.support.redis_cluster import ClusterProxies

    proxies = ClusterProxies(redis_cluster)
    proxies.install(monkeypatch)
    settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_URL": proxies.url, "REDIS_CLUSTER": True, "HEALTH_COOLDOWN": 5.0}
    try:
        keys = _key_per_master(redis_cluster, key_prefix)
        for key in keys.values():
            assert redis_backend.call("status", lambda r, k=key: r.set(k, "v", ex=600))
        dead_port = next(iter(keys))
        proxies.down(dead_port)
        outcomes = {}
        for port, key in keys.items():
            try:
                outcomes[port] = _get(key)
            except RedisUnavailable:
                outcomes[port] = "fallback"
        assert outcomes == {p: "fallback" if p == dead_port else b"v" for p in keys}
        proxies.down()
        for key in keys.values():
            with pytest.raises(RedisUnavailable):
                _get(key)
        proxies.up()
        clock.advance(5.0)
        assert [_get(key) for key in keys.values()] == [b"v"] * len(keys)
    finally:
        proxies.close()
