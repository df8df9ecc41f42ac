"""Several startup nodes in HOTCACHE['REDIS_URL'] (redis://a:7000,b:7001/0): a process starts while any listed
node answers (issue 18, docs/design/keys-and-lua.md "client start")."""

from __future__ import annotations

import uuid

import pytest

from hotcache import ratelimit
from hotcache.backends import cluster
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import redis_gate
from hotcache.checks.redis_target import check_celery_broker_on_cluster, check_redis_target
from hotcache.exceptions import RedisUnavailable
from hotcache.ratelimit import Limit


def test_a_process_starts_while_the_first_listed_node_is_down(settings, own_redis_cluster):
    nodes = own_redis_cluster
    dead, replicas = nodes.kill_master(slot=0)
    nodes.wait_for_promotion(dead, replicas)  # the cluster is whole again; the dead node stays down
    alive = [n for n in nodes.live_nodes() if n.port != dead.port]
    key = f"startup:{uuid.uuid4().hex}"

    # Only the dead node listed: a new process cannot build its client (what the setting fixes).
    settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_URL": f"redis://127.0.0.1:{dead.port}/0", "REDIS_CLUSTER": True}
    redis_backend.reset()
    with pytest.raises(RedisUnavailable):
        redis_backend.call("status", lambda r: r.set(key, 1, ex=60))
    redis_gate.reset()

    # The dead node listed first, then two live ones: the process starts from the next one that answers.
    listed = ",".join([f"127.0.0.1:{dead.port}", *(n.address for n in alive[:2])])
    settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_URL": f"redis://{listed}/0", "REDIS_CLUSTER": True}
    redis_backend.reset()
    assert redis_backend.call("status", lambda r: r.set(key, 1, ex=60)) is True
    client = redis_backend.get_client()
    assert client.get_node_from_key(key).port != dead.port
    assert int(redis_backend.call("status", lambda r: r.incr(key))) == 2  # the value written above, on the cluster
    # Every feature's keys reach every live master: a rate-limit decision is taken by Redis, not the fallback.
    limit = Limit("startup", uuid.uuid4().hex, 2, 60)
    assert [ratelimit.evaluate([limit]).allowed for _ in range(3)] == [True, True, False]
    assert redis_gate.allow()


def test_startup_urls_keep_scheme_credentials_database_and_options():
    url = "rediss://user:pw@a.example:7000, b.example:7001/0?ssl_cert_reqs=none"
    assert cluster.startup_urls(url) == [
        "rediss://user:pw@a.example:7000/0?ssl_cert_reqs=none",
        "rediss://user:pw@b.example:7001/0?ssl_cert_reqs=none",
    ]
    assert cluster.startup_urls("redis://a:7000/0") == ["redis://a:7000/0"]


def test_several_nodes_are_a_valid_cluster_url(hotcache_config):
    hotcache_config(REDIS_URL="redis://10.0.0.1:7000,10.0.0.2:7001,10.0.0.3/0", REDIS_CLUSTER=True)
    assert check_redis_target() == []


def test_several_nodes_without_redis_cluster_are_an_error(hotcache_config):
    hotcache_config(REDIS_URL="redis://10.0.0.1:7000,10.0.0.2:7001/0")
    [error] = check_redis_target()
    assert error.id == "hotcache.E123"
    assert "HOTCACHE['REDIS_CLUSTER']" in error.msg and "2 nodes" in error.msg


@pytest.mark.parametrize("url", ["redis://10.0.0.1:7000,,10.0.0.2:7001/0", "redis://10.0.0.1:7000,10.0.0.2:x/0"])
def test_a_listed_node_that_is_not_host_port_is_an_error(hotcache_config, url):
    hotcache_config(REDIS_URL=url, REDIS_CLUSTER=True)
    [error] = check_redis_target()
    assert error.id == "hotcache.E122"
    assert "is not a node (host:port)" in error.msg


def test_the_celery_broker_on_any_listed_node_is_warned_about(hotcache_config, settings):
    hotcache_config(REDIS_URL="redis://10.0.0.1:7000,10.0.0.2:7001/0", REDIS_CLUSTER=True)
    settings.CELERY_BROKER_URL = "redis://10.0.0.2:7001/0"
    assert [w.id for w in check_celery_broker_on_cluster()] == ["hotcache.W121"]
