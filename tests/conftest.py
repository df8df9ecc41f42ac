"""Shared fixtures. Redis-claiming tests use the real server from config.settings.test (started there if
none answers); each run has its own key prefix and deletes only its own keys at the end."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis as redis_py

from hotcache.backends import reset_all
from hotcache.testing import RedisProxy, frozen_clock, reset


@pytest.fixture(autouse=True)
def _hotcache_isolation() -> Iterator[None]:
    """Every test starts with fresh clients, a closed gate, empty meters and an empty MongoDB stand-in."""
    reset()
    yield
    reset_all()


def _redis_url() -> str:
    return os.environ["HOTCACHE_TEST_REDIS_URL"]


@pytest.fixture
def redis_url() -> str:
    """URL of the real Redis the tests use (database index and key prefix are this run's own)."""
    return _redis_url()


@pytest.fixture
def raw_redis() -> Iterator[redis_py.Redis]:
    """A plain redis-py client to the test Redis, for assertions (not metered, no gate)."""
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
def fake_redis(settings: Any) -> Iterator[None]:
    """Point hotcache at in-process fakeredis (fast unit tests only; never proof of Redis semantics)."""
    settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_ALIAS": "fake"}
    yield
    from django_redis import get_redis_connection

    get_redis_connection("fake").flushall()


@pytest.fixture
def redis_proxy(settings: Any) -> Iterator[RedisProxy]:
    """hotcache talks to the real Redis through a proxy the test can take down (.down()) and bring back (.up())."""
    proxy = RedisProxy(_redis_url())
    caches = dict(settings.CACHES)
    caches["default"] = {**caches["default"], "LOCATION": proxy.url}
    settings.CACHES = caches
    yield proxy
    proxy.down()


@pytest.fixture
def lost_reply_proxy(settings: Any, redis_url: str) -> Iterator[Any]:
    """hotcache talks to the real Redis through a LostReplyProxy: ``arm(needle, "apply" | "drop", ...)``
    makes chosen commands lose their reply (see tests/support/lost_reply.py)."""
    from tests.support.lost_reply import LostReplyProxy

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
    """hotcache's Redis alias points at a closed local port: every connection is refused."""
    port = _closed_port()
    caches = dict(settings.CACHES)
    caches["default"] = {**caches["default"], "LOCATION": f"redis://127.0.0.1:{port}/0"}
    settings.CACHES = caches
    return port


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
