"""The native async path serves a single Redis server; on a Redis Cluster async code takes the sync path in a
worker thread (hotcache.backends.aredis). Under HOTCACHE_TEST_REDIS_TARGET=cluster (the survey of what breaks on a
cluster) the single-server tests here do not apply, as conftest's ``redis_target`` skips its single-server half;
the tests that ask for the cluster themselves (``cluster_redis``) still run and prove the fallback."""

from __future__ import annotations

import inspect

import pytest

from tests.support.redis_cluster import on_cluster


@pytest.fixture(autouse=True)
def _single_server_only(request: pytest.FixtureRequest) -> None:
    # The test's own arguments: conftest's cluster switch requests cluster_redis for every test of such a run.
    if on_cluster() and "cluster_redis" not in inspect.signature(request.function).parameters:
        pytest.skip("the native async path serves a single server; on a cluster: test_*_cluster_* here")
