"""The health gate: a dead Redis costs each process at most one attempt per cool-down, and recovery is automatic."""

import threading

import pytest
import redis.connection

from hotcache.backends import redis as redis_backend
from hotcache.backends.health import CLOSED, OPEN, HealthGate, redis_gate
from hotcache.exceptions import RedisUnavailable


@pytest.fixture
def connect_attempts(monkeypatch):
    attempts = []
    original = redis.connection.AbstractConnection.connect

    def counting(self, *args, **kwargs):
        attempts.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "connect", counting)
    return attempts


def ping():
    return redis_backend.call("test", lambda r: r.ping())


def test_refused_connection_opens_gate_at_once(redis_down, clock, connect_attempts):
    for _ in range(50):
        with pytest.raises(RedisUnavailable):
            ping()
    assert len(connect_attempts) == 1
    assert redis_gate.state == OPEN
    snap = redis_gate.snapshot()
    assert snap.opens == 1 and snap.rejected == 49


def test_one_probe_per_cooldown(redis_down, clock, connect_attempts, hotcache_config):
    hotcache_config(HEALTH_COOLDOWN=5.0)
    for cooldown in range(3):
        for _ in range(20):
            with pytest.raises(RedisUnavailable):
                ping()
        assert len(connect_attempts) == cooldown + 1
        clock.advance(5.0)


def test_gate_returns_to_redis_by_itself(redis_proxy, clock, hotcache_config):
    hotcache_config(HEALTH_COOLDOWN=5.0)
    assert ping()
    redis_proxy.down()
    with pytest.raises(RedisUnavailable):
        ping()
    assert redis_gate.state == OPEN
    redis_proxy.up()
    with pytest.raises(RedisUnavailable):  # still inside the cool-down: not even tried
        ping()
    clock.advance(5.0)
    assert ping() is True
    assert redis_gate.state == CLOSED
    assert redis_gate.snapshot().recoveries == 1


def test_timeouts_open_the_gate_after_threshold(settings, clock, hotcache_config):
    """A server that accepts but never answers: each call costs one socket timeout, until the gate opens."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    try:
        settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"],
                                                          "LOCATION": f"redis://127.0.0.1:{port}/0"}}
        hotcache_config(REDIS_SOCKET_TIMEOUT=0.05, REDIS_CONNECT_TIMEOUT=0.05, HEALTH_FAILURE_THRESHOLD=3)
        errors = []
        for _ in range(10):
            with pytest.raises(RedisUnavailable) as info:
                ping()
            errors.append(info.value.gate_open)
        assert errors == [False, False, False] + [True] * 7
    finally:
        server.close()


def test_only_one_caller_probes_after_cooldown(clock):
    gate = HealthGate("unit")
    gate.failure(ConnectionError("down"), immediate=True)
    clock.advance(10)
    allowed = []
    barrier = threading.Barrier(8)

    def attempt():
        barrier.wait()
        allowed.append(gate.allow())

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed.count(True) == 1


def test_transitions_are_logged_once(redis_down, clock, caplog):
    with caplog.at_level("ERROR", logger="hotcache.health"):
        for _ in range(10):
            with pytest.raises(RedisUnavailable):
                ping()
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1


def test_a_probe_answered_with_a_per_call_error_closes_the_gate(redis_proxy, clock):
    """Redis answering with an error of the call itself (unknown command, WRONGTYPE) is alive: never stuck probing."""
    redis_proxy.down()
    with pytest.raises(RedisUnavailable):
        ping()
    assert redis_gate.state == OPEN
    redis_proxy.up()
    clock.advance(5.0)
    with pytest.raises(RedisUnavailable):
        redis_backend.call("test", lambda r: r.execute_command("HOTCACHE-NO-SUCH-COMMAND"))
    assert redis_gate.state == CLOSED
    assert ping() is True


def test_a_probe_whose_caller_raised_lets_the_next_caller_probe(redis_proxy, clock):
    redis_proxy.down()
    with pytest.raises(RedisUnavailable):
        ping()
    redis_proxy.up()
    clock.advance(5.0)

    def broken(r):
        raise KeyError("a bug in the caller's own code")

    with pytest.raises(KeyError):
        redis_backend.call("test", broken)
    assert redis_gate.state == OPEN
    assert ping() is True  # the next caller is the probe
    assert redis_gate.state == CLOSED


def test_a_feature_stops_paying_timeouts_once_the_gate_opens(settings, clock, hotcache_config):
    """Through a feature's public API: a Redis that accepts but never answers costs each call one timeout
    until HEALTH_FAILURE_THRESHOLD of them open the gate; then no call reaches the server at all."""
    import socket

    from hotcache import analytics

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted = []

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)  # held open, never answered

    threading.Thread(target=accept, daemon=True).start()
    port = server.getsockname()[1]
    try:
        settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"],
                                                          "LOCATION": f"redis://127.0.0.1:{port}/0"}}
        hotcache_config(REDIS_SOCKET_TIMEOUT=0.05, REDIS_CONNECT_TIMEOUT=0.05, HEALTH_FAILURE_THRESHOLD=3)
        outcomes = [analytics.track("gate", path="/") for _ in range(8)]
        assert redis_gate.state == OPEN
        assert redis_gate.snapshot().consecutive_failures == 3
        reached = len(accepted)
        assert [analytics.track("gate", path="/") for _ in range(5)] == ["fallback"] * 5
        assert len(accepted) == reached  # the open gate sends nothing to the hung server
        assert outcomes[3:] == ["fallback"] * 5
    finally:
        server.close()
        for conn in accepted:
            conn.close()


def test_a_deletion_passes_a_gate_opened_by_a_full_redis_and_leaves_it_open(oom_redis, clock, hotcache_config):
    """A full Redis still deletes (and serves reads to other processes): a feature's deletion is sent past the
    gate its refusals opened, and its success does not close the gate (it says nothing about writes)."""
    hotcache_config(HEALTH_FAILURE_THRESHOLD=1)
    raw = oom_redis.client()
    raw.set("k", "v")
    raw.config_set("maxmemory", 1)
    with pytest.raises(RedisUnavailable) as refused:
        redis_backend.call("test", lambda r: r.set("k2", "v"))
    assert refused.value.answered and not refused.value.maybe_applied
    assert redis_gate.state == OPEN and redis_gate.answering()
    with pytest.raises(RedisUnavailable) as rejected:
        redis_backend.call("test", lambda r: r.delete("k"))  # not declared a deletion: turned away
    assert rejected.value.gate_open
    assert redis_backend.call("test", lambda r: r.delete("k"), deletion=True) == 1
    assert redis_gate.state == OPEN and redis_gate.snapshot().rejected == 1
    oom_redis.stop()  # now unreachable: recorded, and no deletion is sent past the gate any more
    with pytest.raises(RedisUnavailable):
        redis_backend.call("test", lambda r: r.delete("k"), deletion=True)
    assert not redis_gate.answering()
    with pytest.raises(RedisUnavailable) as rejected:
        redis_backend.call("test", lambda r: r.delete("k"), deletion=True)
    assert rejected.value.gate_open


def test_a_deletion_does_not_pass_a_gate_opened_by_an_unreachable_redis(redis_down, clock, connect_attempts):
    with pytest.raises(RedisUnavailable):
        ping()
    assert redis_gate.state == OPEN and not redis_gate.answering()
    with pytest.raises(RedisUnavailable) as rejected:
        redis_backend.call("test", lambda r: r.delete("k"), deletion=True)
    assert rejected.value.gate_open and len(connect_attempts) == 1


def test_node_gates_are_independent_and_the_snapshot_names_the_node_that_is_down(clock):
    """On a cluster each node has a gate (backends.cluster asks it): one node's failure leaves the others and the
    process gate closed; the reports' snapshot shows that node, and opens count every gate (MFA's marker)."""
    from hotcache.backends.health import RedisGate

    gates = RedisGate("redis")
    a, b = gates.node("10.0.0.1:7000"), gates.node("10.0.0.2:7000")
    assert gates.node("10.0.0.1:7000") is a
    a.failure(ConnectionRefusedError("refused"), immediate=True)
    assert (a.state, b.state, gates.state) == (OPEN, CLOSED, CLOSED)
    assert gates.allow() and b.allow() and not a.allow()
    snap = gates.snapshot()
    assert (snap.state, snap.opens, snap.rejected) == (OPEN, 1, 1)
    assert snap.reason().startswith("Redis node 10.0.0.1:7000 unavailable (ConnectionRefusedError: refused)")
    assert snap.retry_at is not None
    b.failure(ConnectionRefusedError("refused"), immediate=True)
    assert gates.snapshot().name == "redis nodes 10.0.0.1:7000, 10.0.0.2:7000"
    # A node that left the routing table (a dead master whose replica took over) is no longer reported down.
    gates.watch_members(lambda: {"10.0.0.2:7000", "10.0.0.3:7000"})
    assert set(gates.node_snapshots()) == {"10.0.0.2:7000"}
    assert gates.snapshot().name == "redis node 10.0.0.2:7000"
    clock.advance(60)
    assert b.allow()  # the node's probe
    b.success()
    snap = gates.snapshot()
    assert (snap.state, snap.opens, snap.recoveries) == (CLOSED, 2, 1)
    gates.reset()
    assert gates.node_snapshots() == {} and gates.snapshot().opens == 0


def test_a_single_server_snapshot_is_the_gate_itself(redis_down, clock):
    with pytest.raises(RedisUnavailable):
        redis_backend.call("status", lambda r: r.ping())
    assert redis_gate.node_snapshots() == {}
    snap = redis_gate.snapshot()
    assert (snap.name, snap.state, snap.opens) == ("redis", OPEN, 1)
