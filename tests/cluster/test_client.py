"""hotcache on a Redis Cluster: the client it builds (HOTCACHE['REDIS_URL'] + REDIS_CLUSTER), its metering, and
every error of the cluster client turned into RedisUnavailable at the one boundary."""

from __future__ import annotations

import uuid

import pytest
from redis.cluster import RedisCluster
from redis.connection import Connection, SSLConnection, parse_url
from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    ClusterError,
    ConnectionError,
    CrossSlotTransactionError,
    InvalidPipelineStack,
    MasterDownError,
    MovedError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

from hotcache import analytics, apikeys, mfa, ratelimit, workbench
from hotcache.backends import cluster, errors
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import redis_gate
from hotcache.exceptions import RedisUnavailable
from hotcache.ratelimit import Limit
from hotcache.testing import count_redis
from tests.support.secantus import free_port


def test_hotcache_builds_a_cluster_client_with_its_short_timeouts(cluster_redis, hotcache_config):
    hotcache_config(REDIS_SOCKET_TIMEOUT=0.25, REDIS_CONNECT_TIMEOUT=0.125)
    client = redis_backend.get_client()
    assert isinstance(client, RedisCluster)
    assert len(client.get_primaries()) == 3
    node = client.get_primaries()[0]
    pool = client.get_redis_connection(node).connection_pool
    assert pool.connection_kwargs["socket_timeout"] == 0.25
    assert pool.connection_kwargs["socket_connect_timeout"] == 0.125
    assert pool.connection_kwargs["client_name"] == "hotcache"
    # The metered class, noting each node's replies for its health gate (backends.cluster).
    assert issubclass(pool.connection_class, redis_backend._metered_class(Connection))
    assert client.retry.get_retries() == 0  # one attempt per call: the gate decides about retries


def test_a_tls_url_keeps_the_metered_connection_class():
    """redis-py's rediss:// parsing sets SSLConnection over any connection_class passed in: the pool class
    hotcache gives each node wraps whatever class the URL asks for."""
    options = parse_url("rediss://user:secret@127.0.0.1:7000/0")
    assert options["connection_class"] is SSLConnection
    pool_class = cluster._metered_pool_class(redis_backend._metered_class)
    pool = pool_class(**{k: v for k, v in options.items() if k != "db"})
    assert issubclass(pool.connection_class, SSLConnection)
    assert issubclass(pool.connection_class, redis_backend._metered_class(SSLConnection))
    assert pool.connection_kwargs["password"] == "secret"


def test_commands_round_trips_and_billed_are_counted_on_the_cluster(cluster_redis, key_prefix):
    keys = [f"{key_prefix}:meter:{uuid.uuid4().hex}" for _ in range(12)]
    client = redis_backend.get_client()
    assert len({client.keyslot(k) // 5461 for k in keys}) > 1  # the keys live on more than one master
    for key in keys:  # warm: each node's connection is opened (its handshake is metered too, never billed)
        redis_backend.call("status", lambda r, k=key: r.set(k, 1, ex=60))
    with count_redis() as counted:
        got = [redis_backend.call("status", lambda r, k=key: r.get(k)) for key in keys]
        redis_backend.call("status", lambda r: r.set(keys[0], 2, ex=60))
    assert got == [b"1"] * 12
    assert (counted.commands, counted.round_trips, counted.billed) == (13, 13, 13)
    assert counted.by_feature["status"] == 13


def test_a_cluster_pipeline_is_one_round_trip_per_node_it_reaches(cluster_redis, key_prefix):
    client = redis_backend.get_client()
    keys = [f"{key_prefix}:pipe:{uuid.uuid4().hex}" for _ in range(30)]
    nodes = {client.get_node_from_key(k).name for k in keys}
    assert len(nodes) == 3
    for key in keys:  # warm every node's connection
        redis_backend.call("status", lambda r, k=key: r.set(k, 1, ex=60))

    def pipelined(r):
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.incr(key)
        return pipe.execute()

    with count_redis() as counted:
        assert redis_backend.call("status", pipelined) == [2] * 30
    assert (counted.commands, counted.round_trips, counted.billed) == (30, 3, 30)


def test_a_script_runs_on_the_cluster_and_reports_its_commands(cluster_redis):
    lim = Limit("cluster-one", uuid.uuid4().hex, 3, 60)
    assert ratelimit.evaluate([lim]).allowed  # warm: discovery, the node's connection, the script's first EVAL
    with count_redis() as counted:
        allowed = [ratelimit.evaluate([lim]).allowed for _ in range(3)]
    assert allowed == [True, True, False]
    assert counted.round_trips == 3
    assert counted.billed > counted.commands  # the script's own commands are billed


def test_a_single_server_url_is_used_instead_of_the_alias(settings, redis_url, key_prefix, raw_redis):
    settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_ALIAS": "fake", "REDIS_URL": redis_url}
    key = f"{key_prefix}:url:{uuid.uuid4().hex}"
    redis_backend.call("status", lambda r: r.set(key, "x", ex=60))
    assert raw_redis.get(key) == b"x"  # the real server, not the 'fake' alias's fakeredis


CLUSTER_ERRORS = [
    ClusterError("TTL exhausted."),
    ClusterDownError("The cluster is down"),
    MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
    TryAgainError("Multiple keys request during rehashing of slot"),
    MovedError("3999 127.0.0.1:6381"),
    AskError("3999 127.0.0.1:6381"),
    ClusterCrossSlotError("Keys in request don't hash to the same slot"),
    SlotNotCoveredError('Slot "42" is not covered by the cluster.'),
    RedisClusterException("Redis Cluster cannot be connected. Please provide at least one reachable node"),
    RedisClusterException("EVALSHA - all keys must map to the same key slot"),
    CrossSlotTransactionError("Send EXEC to a different node than the keys"),
    InvalidPipelineStack("Pipeline stack is invalid"),
    ConnectionError("Error 111 connecting to 127.0.0.1:7000. Connection refused."),
    TimeoutError("Timeout reading from socket"),
]


@pytest.mark.parametrize("error", CLUSTER_ERRORS, ids=lambda e: type(e).__name__)
def test_every_cluster_client_error_becomes_redis_unavailable(error):
    def fails(_client):
        raise error

    with pytest.raises(RedisUnavailable) as raised:
        redis_backend.call("status", fails)
    assert raised.value.__cause__ is error


def test_cluster_errors_that_are_not_redis_errors_tell_the_gate_what_they_mean():
    assert not issubclass(RedisClusterException, RedisError)  # why call() names them
    assert errors.classify(SlotNotCoveredError("Slot 1 is not covered")).kind == errors.SERVER_STATE
    assert errors.classify(RedisClusterException("Redis Cluster cannot be connected.")).kind == errors.CONNECTION
    assert errors.classify(RedisClusterException("EVAL - all keys must map to the same key slot")).kind == errors.CALL

    def unreachable(_client):
        raise RedisClusterException("Redis Cluster cannot be connected. Please provide at least one reachable node")

    with pytest.raises(RedisUnavailable):
        redis_backend.call("status", unreachable)
    assert not redis_gate.allow()  # nothing reachable: the gate opens at once, as for a refused connection


def test_keys_on_two_slots_fall_back_without_opening_the_gate(cluster_redis, key_prefix):
    def two_slots(r):
        return redis_backend.eval_lua(r, "return 1", [f"{key_prefix}:a", f"{key_prefix}:b"])

    with pytest.raises(RedisUnavailable):
        redis_backend.call("status", two_slots)
    assert redis_gate.allow()


def _every_feature_answers() -> None:
    """Each feature meets the cluster client's error itself (the gate is closed again before each) and falls back."""
    redis_gate.reset()
    decision = ratelimit.evaluate([Limit("down", uuid.uuid4().hex, 5, 60)])
    assert decision.allowed  # the default outage policy (local) admits within the limit
    redis_gate.reset()
    user = f"u-{uuid.uuid4().hex[:8]}"
    code = mfa.issue(user)
    redis_gate.reset()
    assert mfa.verify(user, code).ok
    redis_gate.reset()
    key = apikeys.create("owner-down", daily_limit=10)
    redis_gate.reset()
    assert apikeys.check(key.raw_key).allowed
    session = uuid.uuid4().hex
    redis_gate.reset()
    version = workbench.save(session, {"a": 1}, owner="o")
    redis_gate.reset()
    assert workbench.load(session).version == version
    redis_gate.reset()
    analytics.track("signup", path="/x")


def test_no_feature_fails_when_no_cluster_node_answers_from_the_start(settings):
    port = free_port()
    settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "REDIS_CLUSTER": True}
    _every_feature_answers()


def test_no_feature_fails_when_every_node_of_a_running_cluster_dies(settings, own_redis_cluster):
    settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_URL": own_redis_cluster.url, "REDIS_CLUSTER": True}
    assert ratelimit.evaluate([Limit("up", uuid.uuid4().hex, 5, 60)]).allowed
    for node in own_redis_cluster.nodes:
        node.kill()
    redis_backend.reset()  # as a new process would; the running client is covered by the gate test below
    _every_feature_answers()


def test_a_running_cluster_client_whose_nodes_all_died_raises_redis_unavailable(settings, own_redis_cluster):
    settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_URL": own_redis_cluster.url, "REDIS_CLUSTER": True}
    key = f"k:{uuid.uuid4().hex}"
    redis_backend.call("status", lambda r: r.set(key, 1, ex=60))
    for node in own_redis_cluster.nodes:
        node.kill()
    with pytest.raises(RedisUnavailable) as raised:
        redis_backend.call("status", lambda r: r.get(key))
    assert isinstance(raised.value.__cause__, ConnectionError | RedisClusterException)
    assert not redis_gate.allow()


def test_on_a_cluster_the_per_request_calls_keep_the_cluster_clients_path(cluster_redis):
    """The lean path (per-thread connections) is for a single server: on a cluster lean_call hands ``fn`` the
    RedisCluster client, as call() does, and a rate-limit decision costs what it costs there."""
    assert isinstance(redis_backend.lean_call("status", lambda r: r), RedisCluster)
    lim = Limit("cluster-lean", uuid.uuid4().hex, 5, 60)
    assert ratelimit.evaluate([lim]).allowed  # warm: discovery, the node's connection, the script's first EVAL
    with count_redis() as counted:
        assert ratelimit.evaluate([lim]).allowed
    assert (counted.round_trips, counted.commands, counted.billed) == (1, 1, 3)
    assert redis_backend.lean_connections() == 0


def test_a_new_connection_to_a_node_is_set_up_in_one_round_trip(cluster_redis):
    """HELLO with the name (hotcache.backends.handshake); no CLIENT SETINFO or MAINT_NOTIFICATIONS; no SELECT on a
    cluster (database 0). Was 5 round trips per node connection."""
    client = redis_backend.get_client()
    node = client.get_primaries()[0]
    pool = client.get_redis_connection(node).connection_pool
    conn = pool.make_connection()
    try:
        with count_redis() as c:
            conn.connect()
        assert (c.commands, c.round_trips, c.billed) == (1, 1, 0)
        conn.send_command("CLIENT", "GETNAME")
        assert conn.read_response() in ("hotcache", b"hotcache")
    finally:
        conn.disconnect()
