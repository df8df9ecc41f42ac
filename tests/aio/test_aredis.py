"""hotcache.backends.aredis against real servers: TLS and credentials carried over from the sync configuration, EVAL
once on NOSCRIPT with the sync path's counts, timeouts and quota refusals judged by the same gate, at most
max_connections per loop, the sync path on asgiref's throwaway loops and on a Redis Cluster."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from asgiref.sync import async_to_sync
from redis.asyncio.connection import SSLConnection

from hotcache.backends import aredis
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import OPEN, redis_gate
from hotcache.exceptions import RedisUnavailable
from hotcache.testing import count_redis
from tests.support.aio import serve
from tests.support.hops import count_hops
from tests.support.redis_servers import RedisServer, tls_files
from tests.support.resp_proxies import DelayProxy, QuotaProxy


def _fresh_script() -> redis_backend.Script:
    """A script no server has seen (its own SHA), so its first EVALSHA gets NOSCRIPT."""
    script = redis_backend.Script.__new__(redis_backend.Script)
    script.name = "fresh"
    script.body = redis_backend.wrap_lua(f"redis.call('EXISTS', KEYS[1]) return '{uuid.uuid4().hex}'")
    script.sha = hashlib.sha1(script.body.encode(), usedforsecurity=False).hexdigest()
    return script


def test_noscript_is_answered_by_one_eval_with_the_sync_paths_counts(key_prefix: str) -> None:
    key = f"{key_prefix}:aio-noscript"
    sync_script, async_script = _fresh_script(), _fresh_script()
    redis_backend.call("t", lambda r: r.ping())  # the sync connection, outside the counts
    with count_redis() as sync_first:
        redis_backend.call("t", lambda r: sync_script(r, [key]))
    with count_redis() as sync_next:
        redis_backend.call("t", lambda r: sync_script(r, [key]))

    async def run() -> tuple[Any, Any, Any, Any]:
        await aredis.acall("t", lambda r: r.ping())
        with count_redis() as first:
            one = await aredis.acall("t", lambda r: aredis.run_script(async_script, r, [key]))
        with count_redis() as following:
            two = await aredis.acall("t", lambda r: aredis.run_script(async_script, r, [key]))
        return first, following, one, two

    first, following, one, two = serve(run())
    assert one == two
    assert (first.round_trips, first.commands, first.billed) == (2, 2, 3)  # EVALSHA refused, EVAL, its EXISTS
    assert (first.round_trips, first.commands, first.billed) == (
        sync_first.round_trips,
        sync_first.commands,
        sync_first.billed,
    )
    assert (following.round_trips, following.commands, following.billed) == (1, 1, 2)
    assert (following.round_trips, following.commands, following.billed) == (
        sync_next.round_trips,
        sync_next.commands,
        sync_next.billed,
    )


def test_tls_and_a_password_are_carried_to_the_async_connections(tmp_path: Any, hotcache_config: Any) -> None:
    files = tls_files(tmp_path)
    server = RedisServer(tls=files)
    try:
        with server.client() as admin:
            admin.config_set("requirepass", "s3cret pass")
        hotcache_config(
            REDIS_URL=f"rediss://default:{quote('s3cret pass')}@127.0.0.1:{server.port}/0"
            f"?ssl_ca_certs={quote(str(files.cert))}&ssl_cert_reqs=required"
        )

        async def run() -> tuple[Any, Any]:
            lean = aredis.client()
            assert lean is not None
            name = await aredis.acall("t", lambda r: r.execute("CLIENT", "GETNAME"))
            return lean.connection_pool.connection_class, name

        connection_class, name = serve(run())
        assert issubclass(connection_class, SSLConnection)
        assert name == b"hotcache"

        hotcache_config(REDIS_URL=f"rediss://default:wrong@127.0.0.1:{server.port}/0?ssl_ca_certs={files.cert}")

        async def refused() -> RedisUnavailable:
            with pytest.raises(RedisUnavailable) as caught:
                await aredis.acall("t", lambda r: r.ping())
            return caught.value

        assert not serve(refused()).maybe_applied
        assert redis_gate.snapshot().state == OPEN  # an authentication failure: like a refused connection
    finally:
        server.stop()


@pytest.fixture
def delayed(hotcache_config: Any, redis_url: str) -> Iterator[Callable[..., DelayProxy]]:
    """``delayed(delay, **settings)``: hotcache's Redis behind a DelayProxy (its ``delay`` can change mid-test), with
    a 50 ms socket timeout and a 1 s connect timeout unless ``settings`` say otherwise."""
    port = int(redis_url.rsplit(":", 1)[1].split("/", 1)[0])
    proxies: list[DelayProxy] = []

    def through(delay: float, **settings: Any) -> DelayProxy:
        proxy = DelayProxy(port, delay=delay)
        proxies.append(proxy)
        url = f"redis://127.0.0.1:{proxy.port}/9"
        hotcache_config(**{"REDIS_URL": url, "REDIS_SOCKET_TIMEOUT": 0.05, "REDIS_CONNECT_TIMEOUT": 1.0, **settings})
        return proxy

    yield through
    for proxy in proxies:
        proxy.close()


def test_timeouts_open_the_gate_after_the_threshold(delayed: Callable[..., DelayProxy]) -> None:
    """A Redis slower than REDIS_SOCKET_TIMEOUT: each async call times out, and the gate opens at the threshold."""
    delayed(0.3, HEALTH_FAILURE_THRESHOLD=3)

    async def run() -> list[str]:
        states = []
        for _ in range(4):
            with pytest.raises(RedisUnavailable):
                await aredis.acall("t", lambda r: r.ping())
            states.append(redis_gate.snapshot().state)
        return states

    assert serve(run()) == ["closed", "closed", "open", "open"]
    assert redis_gate.snapshot().rejected == 1


def test_a_reply_later_than_the_socket_timeout_on_an_open_connection_times_out(
    delayed: Callable[..., DelayProxy],
) -> None:
    """The round trip on a connection already open is bounded by REDIS_SOCKET_TIMEOUT (one timer of the loop for
    every call in flight): redis-py's TimeoutError, judged by the gate as a timeout, ``maybe_applied`` since the
    command was sent; the connection is dropped, so the next call never reads the late reply."""
    proxy = delayed(0.0, HEALTH_FAILURE_THRESHOLD=3)

    async def run() -> tuple[RedisUnavailable, Any, Any, Any]:
        await aredis.acall("t", lambda r: r.ping())  # connected, the handshake answered in time
        proxy.delay = 0.3
        with pytest.raises(RedisUnavailable) as caught:
            await aredis.acall("t", lambda r: r.execute("ECHO", "late"))
        failures = redis_gate.snapshot()
        proxy.delay = 0.0
        again = await aredis.acall("t", lambda r: r.execute("ECHO", "next"))
        return caught.value, failures, again, redis_gate.snapshot()

    late, failures, again, gate = serve(run())
    assert late.maybe_applied and not late.answered
    assert "Timeout reading from socket" in str(late)
    assert failures.state == "closed" and failures.consecutive_failures == 1  # a timeout: toward the threshold
    assert again == b"next" and gate.state == "closed"


def test_a_caller_waiting_for_a_connection_gets_the_slot_of_one_that_failed(
    delayed: Callable[..., DelayProxy],
) -> None:
    """At max_connections a caller waits for a connection to come back; when the one in use fails instead (it is
    dropped, never reused half-read), the waiting caller opens its own in the freed slot rather than waiting on."""
    delayed(0.3, HEALTH_FAILURE_THRESHOLD=10)

    async def run() -> tuple[list[Any], bool, int]:
        lean = aredis.client()
        assert lean is not None
        lean._slots = asyncio.Semaphore(1)
        calls = asyncio.gather(*(aredis.acall("t", lambda r: r.ping()) for _ in range(2)), return_exceptions=True)
        results = await asyncio.wait_for(calls, 10)  # a guard against a caller left waiting, not a timing
        return results, lean._slots.locked(), len(lean._free)

    results, locked, free = serve(run())
    assert [type(r) for r in results] == [RedisUnavailable, RedisUnavailable]  # both tried: each timed out
    assert not locked and free == 0  # both connections dropped, their slots given back


def test_a_quota_refusal_opens_the_gate_at_once(hotcache_config: Any, redis_url: str) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/", 1)[0])
    proxy = QuotaProxy(port, db=9)
    try:
        hotcache_config(REDIS_URL=proxy.url)

        async def run() -> RedisUnavailable:
            await aredis.acall("t", lambda r: r.ping())
            proxy.quota_on = True
            with pytest.raises(RedisUnavailable) as caught:
                await aredis.acall("t", lambda r: r.ping())
            return caught.value

        exc = serve(run())
        assert exc.answered and not exc.maybe_applied
        gate = redis_gate.snapshot()
        assert gate.state == OPEN and gate.quota
    finally:
        proxy.close()


def test_at_most_max_connections_per_loop() -> None:
    async def run() -> int:
        lean = aredis.client()
        assert lean is not None
        lean._slots = asyncio.Semaphore(2)
        await asyncio.gather(*(aredis.acall("t", lambda r: r.ping()) for _ in range(20)))
        return len(lean._free)

    assert serve(run()) == 2


def test_throwaway_loops_of_async_to_sync_take_the_sync_path() -> None:
    """Async code under WSGI runs on a new loop per async_to_sync call: no connection (and handshake) per call,
    the sync path in a worker thread instead."""

    from hotcache.ratelimit import Limit, aevaluate

    async def run() -> tuple[bool, Any, list[str]]:
        with count_redis() as count, count_hops() as hops:
            decision = await aevaluate([Limit("wsgi", f"id-{uuid.uuid4().hex[:8]}", 10, 60)])
        assert decision.allowed
        return aredis.client() is None, count, list(hops)

    async_to_sync(run)()  # this thread's connection (the sync path's) opened once
    sync_path, count, hops = async_to_sync(run)()  # a new throwaway loop, the same thread and connection
    assert sync_path
    assert (count.round_trips, count.commands) == (1, 1)  # no handshake
    assert hops == ["hotcache.ratelimit.core.evaluate_in"]


def test_a_redis_cluster_takes_the_sync_path_in_a_worker_thread(cluster_redis: Any) -> None:
    """redis.asyncio.cluster is not wired: on a cluster the async rate limit is the sync one, one hop."""
    from hotcache.ratelimit import Limit, aevaluate

    ident = f"id-{uuid.uuid4().hex[:8]}"

    async def run() -> tuple[list[bool], list[str]]:
        with count_hops() as hops:
            allowed = [(await aevaluate([Limit("cl", ident, 2, 60)])).allowed for _ in range(4)]
        return allowed, list(hops)

    allowed, hops = serve(run())
    assert allowed == [True, True, False, False]
    assert hops == ["hotcache.ratelimit.core.evaluate_in"] * 3  # the fourth: the deny cache, on the loop


def test_a_cancelled_call_never_leaves_its_reply_for_the_next(delayed: Callable[..., DelayProxy]) -> None:
    """The request went away mid-call (its task cancelled after the command was sent): the connection is dropped,
    so the next call never reads the cancelled call's reply, and the gate is left as it was (no stuck probe)."""
    delayed(0.2, REDIS_SOCKET_TIMEOUT=5.0)

    async def run() -> tuple[Any, str]:
        await aredis.acall("t", lambda r: r.ping())  # connected (the handshake outside the cancelled call)
        with pytest.raises(TimeoutError):
            # Cancelled long before the reply can come back (0.4 s round trip through the proxy).
            await asyncio.wait_for(aredis.acall("t", lambda r: r.execute("ECHO", "first")), 0.05)
        second = await aredis.acall("t", lambda r: r.execute("ECHO", "second"))
        return second, redis_gate.snapshot().state

    assert serve(run()) == (b"second", "closed")


def test_a_connection_the_server_closed_while_idle_is_replaced_not_a_failure(raw_redis: Any) -> None:
    """Redis (or a load balancer) closed an idle connection: the next call opens a new one instead of failing on the
    old one, so the gate stays closed."""

    name = f"hotcache-idle-{uuid.uuid4().hex[:8]}"

    async def run() -> tuple[Any, str, int]:
        await aredis.acall("t", lambda r: r.execute("CLIENT", "SETNAME", name))
        _kill_named(raw_redis, name)
        lean = aredis.client()
        assert lean is not None
        while not lean._free[0]._parser._stream.at_eof():  # the loop sees the server's FIN
            await asyncio.sleep(0)
        pong = await aredis.acall("t", lambda r: r.ping())
        return pong, redis_gate.snapshot().state, redis_gate.snapshot().opens

    pong, state, opens = serve(run())
    assert pong in (True, b"PONG") and state == "closed" and opens == 0


def _kill_named(raw_redis: Any, name: str) -> None:
    for client in raw_redis.client_list():
        if client.get("name") == name:
            raw_redis.execute_command("CLIENT", "KILL", "ID", client["id"])


def test_after_aclose_the_next_call_opens_a_new_connection() -> None:
    """aclose() (an ASGI server's shutdown; tests) closes the loop's connections; the next call on the same loop opens
    a new one instead of waiting on the closed client for a connection that never comes back."""

    async def run() -> tuple[Any, bool]:
        first = aredis.client()
        assert first is not None
        first._slots = asyncio.Semaphore(1)
        await aredis.acall("t", lambda r: r.ping())
        await aredis.aclose()
        # A guard against a caller left waiting for a connection, not a timing.
        pong = await asyncio.wait_for(aredis.acall("t", lambda r: r.ping()), 10)
        return pong, aredis.client() is first

    pong, same = serve(run())
    assert pong in (True, b"PONG") and not same


def test_a_float_or_bool_argument_is_never_sent_as_the_equal_int_of_a_command_packed_before(key_prefix: str) -> None:
    """Commands are kept packed per loop; 1.0 and True equal 1 (and hash alike) but pack differently, so a command
    with them is packed for itself, as the sync path packs it."""
    key = f"{key_prefix}:aio-packed-float"

    async def run() -> Any:
        await aredis.acall("t", lambda r: r.execute("SET", key, 1))
        await aredis.acall("t", lambda r: r.execute("SET", key, 1.0))
        return await aredis.acall("t", lambda r: r.execute("GET", key))

    assert serve(run()) == redis_backend.call("t", lambda r: (r.set(key, 1.0), r.get(key))[1])
