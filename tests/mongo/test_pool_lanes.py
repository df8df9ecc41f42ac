"""The pool a process holds on a real server: 1 pooled connection while Redis is healthy (at most
MONGO_HEALTHY_MAX_OVERFLOW more while MongoDB is slow), the whole pool for the fallbacks while its gate is
open (hotcache/backends/mongo.py, ``_Lane``; docs/operations/mongodb.md).

Each test starts hotcache's client afresh and counts what it opens twice: from pymongo's pool events
(``pool_stats()``, ``connection_origins()``) and from the server's own ``serverStatus.connections.totalCreated``
(read through a raw client opened before the count starts, polling its monitor so it opens nothing later).
A ``blockConnection`` fail point on hotcache's ``find`` holds each query on its connection, so the calls of
the threads overlap and each would need a connection of its own without the limit.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from hotcache import apikeys, reports
from hotcache.backends import mongo
from hotcache.backends.health import CLOSED, redis_gate
from hotcache.exceptions import MongoUnavailable
from tests.support.secantus import HOTCACHE_APPNAME

pytestmark = [pytest.mark.django_db(databases=[]), pytest.mark.timeout(120)]


class _Server:
    """serverStatus.connections through one raw client that opens no connection after its first command."""

    def __init__(self, real_mongo: Any) -> None:
        self.admin = real_mongo.client(serverMonitoringMode="poll").admin
        self.admin.command("ping")

    def created(self) -> int:
        return int(self.admin.command("serverStatus")["connections"]["totalCreated"])

    @contextmanager
    def slow_finds(self, block_ms: int) -> Iterator[None]:
        """Every ``find`` of hotcache's client holds its connection ``block_ms`` before it answers."""
        data = {"failCommands": ["find"], "appName": HOTCACHE_APPNAME, "blockConnection": True,
                "blockTimeMS": block_ms}
        self.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data=data)
        try:
            yield
        finally:
            self.admin.command("configureFailPoint", "failCommand", mode="off")


def _in_threads(n: int, work: Callable[[int], Any]) -> list[Any]:
    """``work(i)`` in ``n`` threads released together; their results (an exception is re-raised)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:  # re-raised below, in the test's thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def test_cold_api_key_loads_in_8_threads_with_redis_healthy_open_one_pooled_connection(real_mongo, hotcache_config):
    """16 keys none of which Redis has cached, checked by 8 threads at once: one query in flight at a time, so
    the process opens its monitoring connection and 1 pooled connection (MONGO_HEALTHY_POOL_SIZE), not 8."""
    keys = [apikeys.create("acme") for _ in range(16)]
    # A key prefix of its own: Redis has none of these records cached (a cold start). The wait never runs out
    # here, so the bound is exact (a call that waited MONGO_HEALTHY_WAIT_MS goes ahead: the next test).
    hotcache_config(KEY_PREFIX=f"lane{uuid.uuid4().hex[:8]}", MONGO_HEALTHY_WAIT_MS=60_000)  # also a new client
    server = _Server(real_mongo)
    before = server.created()
    with server.slow_finds(40):
        usages = _in_threads(8, lambda i: [apikeys.check(keys[i].raw_key), apikeys.check(keys[i + 8].raw_key)])
    opened = server.created() - before

    assert all(u.allowed for pair in usages for u in pair)
    assert redis_gate.state == CLOSED, "Redis stayed healthy: these were cold loads, not fallbacks"
    stats = mongo.pool_stats()
    assert stats.peak_open == 1 and stats.peak_checked_out == 1
    assert stats.lane_waits > 0 and stats.lane_overflows == 0, "the threads did contend (else this proves nothing)"
    # The one pooled connection was opened by the process's first call (its index check, then reused).
    [(site, count)] = mongo.connection_origins().items()
    assert count == 1 and site.startswith("apikeys apikeys/_documents.py:")
    assert opened == 2, "1 monitoring (poll) + 1 pooled connection, as the server counts them"
    waits = stats.lane_waits
    note = reports.overview().mongo.pool_limit.note  # what the overview and hotcache_status show
    assert f"; {waits} calls waited for the healthy limit (MONGO_HEALTHY_POOL_SIZE)" in note and "0 went ahead" in note


def test_a_call_that_waited_mongo_healthy_wait_ms_goes_ahead_on_the_pool(real_mongo, hotcache_config):
    """Past the wait a call takes a pooled connection of its own (counted as an overflow), at most
    MONGO_HEALTHY_MAX_OVERFLOW (2) of them at once; the others wait their turn and succeed."""
    keys = [apikeys.create("acme") for _ in range(6)]
    hotcache_config(KEY_PREFIX=f"lane{uuid.uuid4().hex[:8]}", MONGO_HEALTHY_WAIT_MS=0,
                    MONGO_WAIT_QUEUE_TIMEOUT_MS=60_000)  # no call waits that long: none fails
    with _Server(real_mongo).slow_finds(300):
        usages = _in_threads(6, lambda i: apikeys.check(keys[i].raw_key))
    assert all(u.allowed for u in usages)
    stats = mongo.pool_stats()
    assert stats.lane_overflows == stats.lane_waits > 0 and stats.lane_refusals == 0
    assert 1 < stats.peak_open <= 3 and stats.peak_checked_out <= 3, "1 + MONGO_HEALTHY_MAX_OVERFLOW"


@pytest.mark.parametrize("cap", [2, 0])
def test_a_stalled_server_with_redis_healthy_opens_at_most_the_overflow_cap_and_fails_the_rest(
        real_mongo, hotcache_config, cap):
    """MongoDB stalled (every find held 3 s) while Redis is healthy: 8 threads' calls open at most
    1 + MONGO_HEALTHY_MAX_OVERFLOW pooled connections (without the cap, one each: 8); a call that finds the cap
    full after MONGO_HEALTHY_WAIT_MS waits MONGO_WAIT_QUEUE_TIMEOUT_MS more and fails as MongoDB unavailable
    (what pymongo's own wait queue raises, so each feature's failure handling applies), counted."""
    hotcache_config(MONGO_HEALTHY_MAX_OVERFLOW=cap, MONGO_HEALTHY_WAIT_MS=100, MONGO_WAIT_QUEUE_TIMEOUT_MS=200)
    coll = mongo.collection("lane_cap", feature="apikeys")
    server = _Server(real_mongo)
    before = server.created()

    def find(i: int) -> Any:
        try:
            return coll.find_one({"_id": i})
        except MongoUnavailable as exc:
            return [exc]  # a result, not re-raised by _in_threads

    with server.slow_finds(3000):
        results = _in_threads(8, find)
    opened = server.created() - before

    assert redis_gate.state == CLOSED
    failed = [r[0] for r in results if isinstance(r, list)]
    stats = mongo.pool_stats()
    assert stats.peak_open <= 1 + cap and stats.peak_checked_out <= 1 + cap
    assert opened <= 2 + cap, "1 monitoring + at most 1 + MONGO_HEALTHY_MAX_OVERFLOW pooled, as the server counts"
    assert len(failed) == stats.lane_refusals >= 8 - (1 + cap), "the calls past the cap failed, each counted"
    assert stats.lane_overflows <= cap
    assert all(not f.maybe_applied and "MONGO_HEALTHY_MAX_OVERFLOW" in str(f) for f in failed), "never sent"
    note = reports.overview().mongo.pool_limit.note
    assert f"{stats.lane_refusals} failed with MONGO_HEALTHY_MAX_OVERFLOW reached" in note


def test_a_call_made_while_its_thread_holds_the_lane_is_not_queued_behind_itself(real_mongo, hotcache_config):
    """A MongoDB call made inside another of the same thread (the lane held) goes ahead: with no overflow allowed
    and a short wait it would otherwise fail on the limit its own thread holds."""
    hotcache_config(MONGO_HEALTHY_MAX_OVERFLOW=0, MONGO_HEALTHY_WAIT_MS=0, MONGO_WAIT_QUEUE_TIMEOUT_MS=100)
    coll = mongo.collection("lane_cap", feature="apikeys")
    assert mongo._run("apikeys", lambda: coll.find_one({"_id": 1})) is None
    stats = mongo.pool_stats()
    assert stats.lane_waits == stats.lane_refusals == 0


def test_with_the_gate_open_the_fallbacks_use_the_whole_pool_and_shed_it_after(real_mongo, redis_down,
                                                                                hotcache_config):
    """Redis down: 6 threads checking API keys on MongoDB each hold a pooled connection at once
    (MONGO_MAX_POOL_SIZE 6 here); none waits for the healthy lane. Once Redis is back, the connections idle
    past MONGO_MAX_IDLE_TIME_MS are closed and the process is back to 1 pooled connection."""
    # No overflow allowed while healthy (MONGO_HEALTHY_MAX_OVERFLOW 0): with the gate open the cap steps aside too.
    hotcache_config(MONGO_MAX_POOL_SIZE=6, MONGO_HEALTHY_WAIT_MS=60_000, MONGO_MAX_IDLE_TIME_MS=300,
                    MONGO_HEALTHY_MAX_OVERFLOW=0)
    keys = [apikeys.create("acme") for _ in range(6)]
    apikeys.check(keys[0].raw_key)  # refused by the closed port: the gate opens at once
    assert redis_gate.state != CLOSED
    mongo.reset()  # count from a new client
    server = _Server(real_mongo)
    before = server.created()
    with server.slow_finds(1500):
        usages = _in_threads(6, lambda i: apikeys.check(keys[i].raw_key))
    opened = server.created() - before

    assert all(u.allowed for u in usages)
    stats = mongo.pool_stats()
    assert stats.peak_checked_out == stats.peak_open == 6
    assert stats.lane_waits == stats.lane_refusals == 0
    assert opened == 7, "1 monitoring + the whole pool"
    assert sum(mongo.connection_origins().values()) == 6

    redis_gate.success()  # Redis is back (as a probe that succeeded tells the gate)
    # pymongo closes the connections idle past maxIdleTimeMS in its periodic check (every second or so): wait
    # for that state, not for a time.
    idle = threading.Event()
    for _ in range(300):
        if mongo.pool_stats().open == 0 or idle.wait(0.1):
            break
    assert mongo.pool_stats().open == 0
    _in_threads(6, lambda i: mongo.collection("api_keys", feature="apikeys").find_one({"_id": i}))
    assert mongo.pool_stats().open == 1, "healthy again: one call at a time, on one new connection"


@pytest.mark.parametrize(("setting", "query", "seconds"), [
    (60_000, "", 60.0), (250, "", 0.25), (0, "", None), (60_000, "?maxIdleTimeMS=5000", 5.0),
])
def test_max_idle_time_comes_from_the_setting_unless_the_url_names_one(real_mongo, hotcache_config, setting, query,
                                                                        seconds):
    """MONGO_MAX_IDLE_TIME_MS (60 s by default) is the client's maxIdleTimeMS; 0 keeps pymongo's (never); a
    maxIdleTimeMS written in MONGO_URL wins."""
    hotcache_config(MONGO_URL=real_mongo.url + query, MONGO_MAX_IDLE_TIME_MS=setting)
    assert mongo.ping() >= 0
    assert mongo._current().client.options.pool_options.max_idle_time_seconds == seconds
