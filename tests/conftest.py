"""Shared fixtures. Redis-claiming tests use the real server from config.settings.test (started there if
none answers); each run has its own key prefix and deletes only its own keys at the end. MongoDB is the
in-process stand-in unless a test asks for ``real_mongo`` / ``mongo_store`` (a SecantusDB server started
once per session, or the server named by HOTCACHE_TEST_MONGO_URL), each test on its own database."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis as redis_py

from hotcache.backends import mongo, reset_all
from hotcache.testing import RedisProxy, frozen_clock, reset
from tests.support.redis_cluster import CLUSTER_URL_ENV, RedisClusterNodes, on_cluster
from tests.support.secantus import RealMongo, SecantusServer, external_url, new_database_name, with_database
from tests.support.stores import StandInMongo


@pytest.fixture(autouse=True)
def _hotcache_isolation() -> Iterator[None]:
    """Every test starts with fresh clients, a closed gate, empty meters and an empty MongoDB stand-in."""
    reset()
    yield
    reset_all()


MONGO_STORES = ("standin", "real")
_OWN_STORE = frozenset({"mongo_store", "real_mongo", "restartable_mongo"})


def _every_test_on_the_real_server() -> bool:
    return os.environ.get("HOTCACHE_TEST_MONGO_STORE") == "real"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``mongo_contract`` (a module's ``pytestmark``, a class or one test) runs once per MongoDB
    store: ``[standin]`` and ``[real]``, through ``_mongo_store_switch``. Not when the test picks its store itself
    (``mongo_store``, ``real_mongo``, ``restartable_mongo``) or HOTCACHE_TEST_MONGO_STORE=real runs every test
    on the real server already."""
    if metafunc.definition.get_closest_marker("mongo_contract") is None or _every_test_on_the_real_server():
        return
    if _OWN_STORE & set(metafunc.fixturenames):
        return
    metafunc.parametrize("_mongo_store_switch", MONGO_STORES, indirect=True)


@pytest.fixture(autouse=True)
def _redis_target_switch(request: pytest.FixtureRequest) -> None:
    """HOTCACHE_TEST_REDIS_TARGET=cluster runs every test with hotcache on the session's Redis Cluster
    (``cluster_redis``) instead of the single server: the survey of what breaks on a cluster (issue 18)."""
    if on_cluster():
        request.getfixturevalue("cluster_redis")
        log_path = os.environ.get("HOTCACHE_TEST_CLUSTER_LOG")
        if log_path:
            _log_refusals(request, log_path)


def _log_refusals(request: pytest.FixtureRequest, path: str) -> None:
    """Append every call Redis (or the cluster client) refused to ``path``, with the test's id: a test can pass
    on a fallback while the cluster refused its calls (CROSSSLOT, a command blocked in a cluster pipeline)."""
    import logging

    class Refusals(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if "rejected" in text or "refused" in text:
                with open(path, "a", encoding="utf-8") as out:
                    out.write(f"{request.node.nodeid}\t{text[:400]}\n")

    handler = Refusals(logging.ERROR)
    logger = logging.getLogger("hotcache")
    logger.addHandler(handler)
    request.addfinalizer(lambda: logger.removeHandler(handler))


@pytest.fixture(autouse=True)
def _mongo_store_switch(request: pytest.FixtureRequest) -> str:
    """Which MongoDB store this test runs on. The stand-in unless the test is a ``mongo_contract`` run with the
    ``real`` parameter, or HOTCACHE_TEST_MONGO_STORE=real (every test on the real server: a survey of where the
    two disagree). Autouse and defined here, so it runs before any feature fixture writes to MongoDB."""
    store = getattr(request, "param", "real" if _every_test_on_the_real_server() else "standin")
    if store == "real":
        request.getfixturevalue("real_mongo")
    return store


def _redis_url() -> str:
    return os.environ["HOTCACHE_TEST_REDIS_URL"]


@pytest.fixture
def redis_url() -> str:
    """URL of the real Redis the tests use (database index and key prefix are this run's own)."""
    return _redis_url()


@pytest.fixture
def raw_redis(request: pytest.FixtureRequest) -> Iterator[redis_py.Redis]:
    """A plain redis-py client to the test Redis, for assertions (not metered, no gate); a RedisCluster client
    when the test runs on the cluster (HOTCACHE_TEST_REDIS_TARGET=cluster)."""
    if os.environ.get("HOTCACHE_TEST_REDIS_TARGET") == "cluster":
        from redis.cluster import RedisCluster

        cluster_client = RedisCluster.from_url(request.getfixturevalue("redis_cluster").url)
        yield cluster_client  # type: ignore[misc]
        cluster_client.close()
        return
    client = redis_py.Redis.from_url(_redis_url())
    yield client
    client.close()


@pytest.fixture
def key_prefix(settings: Any) -> str:
    return settings.HOTCACHE["KEY_PREFIX"]


@pytest.fixture
def hotcache_config(settings: Any) -> Callable[..., None]:
    """hotcache_config(NAME=value, ...) merges into HOTCACHE for this test."""

    def apply(**values: Any) -> None:
        settings.HOTCACHE = {**settings.HOTCACHE, **values}

    return apply


@pytest.fixture
def single_tag_layout(settings: Any) -> None:
    """KEY_BUCKETS=1 for a test that reads or tampers with keys by their single-tag names ({workbench:s},
    {analytics:a}, {apikeys:touched}), or counts the commands of that layout, on every Redis target. The spread
    layouts run the same code per bucket: tests/contracts/test_bucket_walks.py, tests/cluster/test_spread.py."""
    settings.HOTCACHE = {**settings.HOTCACHE, "KEY_BUCKETS": 1}


@pytest.fixture
def fake_redis(settings: Any) -> Iterator[None]:
    """Point hotcache at in-process fakeredis (fast unit tests only; never proof of Redis semantics)."""
    settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_ALIAS": "fake"}
    yield
    from django_redis import get_redis_connection

    get_redis_connection("fake").flushall()


@pytest.fixture
def redis_proxy(settings: Any, request: pytest.FixtureRequest) -> Iterator[RedisProxy]:
    """hotcache talks to the real Redis through a proxy the test can take down (.down()) and bring back (.up()).

    On the cluster (HOTCACHE_TEST_REDIS_TARGET=cluster): a proxy in front of every node of the session's cluster
    (tests.support.redis_cluster.ClusterProxies), with the same down() / up()."""
    if on_cluster():
        from tests.support.redis_cluster import ClusterProxies

        proxies = ClusterProxies(request.getfixturevalue("redis_cluster"))
        proxies.install(request.getfixturevalue("monkeypatch"))
        settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_URL": proxies.url, "REDIS_CLUSTER": True}
        yield proxies  # type: ignore[misc]
        proxies.close()
        return
    proxy = RedisProxy(_redis_url())
    caches = dict(settings.CACHES)
    caches["default"] = {**caches["default"], "LOCATION": proxy.url}
    settings.CACHES = caches
    yield proxy
    proxy.down()


@pytest.fixture
def lost_reply_proxy(settings: Any, redis_url: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """hotcache talks to the real Redis through a LostReplyProxy: ``arm(needle, "apply" | "drop", ...)``
    makes chosen commands lose their reply (see tests/support/lost_reply.py). On the cluster
    (HOTCACHE_TEST_REDIS_TARGET=cluster): one in front of every node, armed together (ClusterLostReplyProxies)."""
    from tests.support.lost_reply import LostReplyProxy

    if on_cluster():
        from tests.support.redis_cluster import ClusterLostReplyProxies

        proxies = ClusterLostReplyProxies(request.getfixturevalue("redis_cluster"))
        proxies.install(request.getfixturevalue("monkeypatch"))
        settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_URL": proxies.url, "REDIS_CLUSTER": True}
        yield proxies
        proxies.close()
        return

    proxy = LostReplyProxy(redis_url)
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": proxy.url}}
    yield proxy
    proxy.close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def redis_down(settings: Any) -> int:
    """hotcache's Redis alias points at a closed local port: every connection is refused. On the cluster
    (HOTCACHE_TEST_REDIS_TARGET=cluster) HOTCACHE['REDIS_URL'] does: no node of the "cluster" answers."""
    port = _closed_port()
    if on_cluster():
        settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "REDIS_CLUSTER": True}
    caches = dict(settings.CACHES)
    caches["default"] = {**caches["default"], "LOCATION": f"redis://127.0.0.1:{port}/0"}
    settings.CACHES = caches
    return port


# --- Redis Cluster ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterNodes]:
    """The session's real Redis Cluster: 6 Debian redis-server nodes (3 masters, 3 replicas) on loopback,
    started on first use (~8 s) and SIGKILLed at the end. Fails (never skips) when it cannot start. Tests
    that kill nodes use ``own_redis_cluster`` instead, so the others keep a whole cluster."""
    cluster = RedisClusterNodes()
    cluster.start()
    os.environ[CLUSTER_URL_ENV] = cluster.url
    try:
        yield cluster
    finally:
        os.environ.pop(CLUSTER_URL_ENV, None)
        cluster.close()


@pytest.fixture
def own_redis_cluster() -> Iterator[RedisClusterNodes]:
    """A Redis Cluster of this test's own, for failover tests (``kill_master``, ``wait_for_promotion``)."""
    cluster = RedisClusterNodes()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


def _use_cluster(settings: Any, cluster: RedisClusterNodes) -> RedisClusterNodes:
    settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_URL": cluster.url, "REDIS_CLUSTER": True}
    return cluster


@pytest.fixture
def cluster_redis(settings: Any, redis_cluster: RedisClusterNodes) -> RedisClusterNodes:
    """hotcache's Redis is the session's cluster (HOTCACHE['REDIS_URL'] + HOTCACHE['REDIS_CLUSTER'] = True)."""
    return _use_cluster(settings, redis_cluster)


@pytest.fixture(params=["single", "cluster"])
def redis_target(request: pytest.FixtureRequest, settings: Any) -> RedisClusterNodes | None:
    """One contract, two Redis targets: the single server (None) and the session's Redis Cluster."""
    if request.param == "cluster":
        return request.getfixturevalue("cluster_redis")
    if os.environ.get("HOTCACHE_TEST_REDIS_TARGET") == "cluster":
        pytest.skip("HOTCACHE_TEST_REDIS_TARGET=cluster: every test already runs on the cluster")
    return None


def _point_at(settings: Any, url: str) -> None:
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": url}}


@pytest.fixture
def oom_redis(settings: Any) -> Iterator[Any]:
    """hotcache's Redis is a throwaway redis-server with ``maxmemory-policy noeviction``: the test fills it with
    ``CONFIG SET maxmemory 1`` (every write refused with OOM) and frees it with ``CONFIG SET maxmemory 0``."""
    from tests.support.redis_servers import RedisServer

    server = RedisServer("--maxmemory-policy", "noeviction")
    _point_at(settings, server.url)
    yield server
    server.stop()


@pytest.fixture
def replica_redis(settings: Any) -> Iterator[Any]:
    """hotcache's Redis is a read-only replica (``redis-server --replicaof``) of a throwaway master; yields the
    replica (promote it with ``REPLICAOF NO ONE``). Its master is ``replica_redis.master``."""
    from tests.support.redis_servers import RedisServer, wait_for

    master = RedisServer()
    replica = RedisServer("--replicaof", "127.0.0.1", str(master.port))
    replica.master = master  # type: ignore[attr-defined]
    with replica.client() as c:
        wait_for(lambda: c.info("replication").get("master_link_status") == "up", "the replica's link to its master")
    _point_at(settings, replica.url)
    yield replica
    replica.stop()
    master.stop()


@pytest.fixture
def quota_proxy(settings: Any) -> Iterator[Any]:
    """hotcache talks to the real Redis through a RESP proxy that, once ``quota_on`` is set, answers every
    command with the provider's quota error (tests/support/resp_proxies.py)."""
    from urllib.parse import urlsplit

    from tests.support.resp_proxies import QuotaProxy

    parts = urlsplit(_redis_url())
    proxy = QuotaProxy(parts.port or 6379, db=int((parts.path or "/0").strip("/") or 0))
    _point_at(settings, proxy.url)
    yield proxy
    proxy.close()


@pytest.fixture
def clock() -> Iterator[Any]:
    """hotcache's clock, frozen; move it with clock.advance(seconds)."""
    with frozen_clock() as frozen:
        yield frozen


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Delete this run's keys (and only this run's) from the shared Redis."""
    prefix = os.environ.get("HOTCACHE_TEST_PREFIX")
    url = os.environ.get("HOTCACHE_TEST_REDIS_URL")
    if not prefix or not url:
        return
    try:
        client = redis_py.Redis.from_url(url)
        batch = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(batch), 500):
            client.unlink(*batch[i : i + 500])
    except redis_py.RedisError:
        pass


@pytest.fixture
def celery_worker(settings: Any) -> Iterator[Any]:
    """A real Celery worker (solo pool, in a thread of this process) consuming from the Redis broker.

    In-process so it shares the MongoDB stand-in with the test; messages still travel through Redis.
    """
    from celery.contrib.testing.worker import start_worker

    from config.celery_app import app

    app.conf.task_always_eager = False
    try:
        with start_worker(
            app, pool="solo", concurrency=1, perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30
        ) as worker:
            yield worker
    finally:
        app.conf.task_always_eager = True


# --- MongoDB: the stand-in and a real server --------------------------------------------------------


@pytest.fixture(scope="session")
def secantus_server() -> Iterator[SecantusServer | None]:
    """The session's real MongoDB server: SecantusDB in memory, started on first use (~3 s); None when
    HOTCACHE_TEST_MONGO_URL names another server. A server that cannot start fails the tests (never skips)."""
    if external_url():
        yield None
        return
    server = SecantusServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


def _use_real_mongo(settings: Any, base_url: str, server: SecantusServer | None) -> RealMongo:
    name = new_database_name()
    handle = RealMongo(with_database(base_url, name), name, server)
    # Generous selection timeout, as config.settings.test does for Redis: on a loaded machine the driver's
    # monitor may take over the 2 s default to see the server again after a dropped connection. Tests of
    # timeouts set their own.
    settings.HOTCACHE = {**settings.HOTCACHE, "MONGO_URL": handle.url, "MONGO_DATABASE": name,
                         "MONGO_SERVER_SELECTION_TIMEOUT_MS": 10_000}
    return handle


@pytest.fixture
def real_mongo(settings: Any, secantus_server: SecantusServer | None) -> Iterator[RealMongo]:
    """hotcache's MONGO_URL / MONGO_DATABASE point at a real server, on a database of this test's own
    (dropped afterwards). Yields .url, .database, .client() / .db() for raw assertions, .fail_point(...)."""
    base = external_url() or (secantus_server.url if secantus_server else "")
    handle = _use_real_mongo(settings, base, secantus_server)
    yield handle
    mongo.reset()
    handle.close()


@pytest.fixture
def restartable_mongo(settings: Any, tmp_path: Any) -> Iterator[RealMongo]:
    """Like real_mongo, on a SecantusDB of this test's own with a data directory: .restart() keeps the data."""
    server = SecantusServer(data_dir=tmp_path / "secantus-data")
    try:
        server.start()
        handle = _use_real_mongo(settings, server.url, server)
        yield handle
        mongo.reset()
        handle.close(drop=False)
    finally:
        server.close()


@pytest.fixture(params=["standin", "real"])
def mongo_store(request: pytest.FixtureRequest, settings: Any) -> StandInMongo | RealMongo:
    """One contract, two stores: the in-process stand-in (mongomock, the default) and a real server."""
    if request.param == "real":
        return request.getfixturevalue("real_mongo")
    if _every_test_on_the_real_server():
        pytest.skip("HOTCACHE_TEST_MONGO_STORE=real: every test already runs on the real server")
    return StandInMongo(settings.HOTCACHE["MONGO_URL"])
