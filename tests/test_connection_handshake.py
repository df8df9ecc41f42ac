"""A new connection's set-up as the real Redis receives it (through a recording RESP proxy) and as hotcache's meter
counts it: one round trip (HELLO carrying the name and any credentials) before the first command, plus SELECT
for a database other than 0, on the pooled path, the lean path and the async path. Counts, never timings."""

from __future__ import annotations

from typing import Any

from hotcache.backends import aredis
from hotcache.backends import redis as redis_backend
from hotcache.testing import count_redis
from tests.support.aio import serve
from tests.support.redis_servers import RedisServer
from tests.support.resp_proxies import QuotaProxy


def _handshake(proxy: Any) -> list[tuple[str, ...]]:
    """The commands the one connection opened through ``proxy`` sent before the test's PING."""
    assert len(proxy.connections) == 1
    sent = proxy.connections[0]
    assert sent[-1] == ("PING",)
    return sent[:-1]


def _expected(db: int) -> list[tuple[str, ...]]:
    return [("HELLO", "3", "SETNAME", "hotcache")] + ([("SELECT", str(db))] if db else [])


def _db(proxy: Any) -> int:
    return int(proxy.url.rsplit("/", 1)[1])


def test_a_pooled_connection_is_set_up_in_one_round_trip_plus_select(quota_proxy: Any) -> None:
    with count_redis() as c:
        assert redis_backend.call("t", lambda r: r.ping()) is True
    setup = _handshake(quota_proxy)
    assert setup == _expected(_db(quota_proxy))
    db = _db(quota_proxy)
    assert (c.commands, c.round_trips, c.billed) == (len(setup) + 1, len(setup) + 1, 1 if db else 0)  # SELECT is billed


def test_a_lean_connection_is_set_up_as_the_pools(quota_proxy: Any) -> None:
    with count_redis() as c:
        assert redis_backend.lean_call("t", lambda r: r.execute_command("PING")) in (True, b"PONG")
    setup = _handshake(quota_proxy)
    assert setup == _expected(_db(quota_proxy))
    assert (c.commands, c.round_trips) == (len(setup) + 1, len(setup) + 1)


def test_an_async_connection_is_set_up_as_the_sync_ones(quota_proxy: Any) -> None:
    async def run() -> Any:
        with count_redis() as c:
            pong = await aredis.acall("t", lambda r: r.ping())
        return pong, c

    pong, c = serve(run())
    assert pong in (True, b"PONG")
    setup = _handshake(quota_proxy)
    assert setup == _expected(_db(quota_proxy))
    assert (c.commands, c.round_trips) == (len(setup) + 1, len(setup) + 1)


def test_a_password_goes_with_hello_one_round_trip_before_the_first_command(hotcache_config: Any) -> None:
    """The managed-Redis shape (credentials, database 0): the whole set-up is one HELLO."""
    server = RedisServer()
    proxy = None
    try:
        with server.client() as admin:
            admin.config_set("requirepass", "s3cret")
        proxy = QuotaProxy(server.port)
        hotcache_config(REDIS_URL=f"redis://default:s3cret@127.0.0.1:{proxy.port}/0")
        with count_redis() as c:
            assert redis_backend.call("t", lambda r: r.ping()) is True
        assert _handshake(proxy) == [("HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "hotcache")]
        assert (c.commands, c.round_trips, c.billed) == (2, 2, 0)
        assert redis_backend.call("t", lambda r: r.client_getname()) in ("hotcache", b"hotcache")
    finally:
        if proxy is not None:
            proxy.close()
        server.stop()


def test_on_resp2_the_name_is_set_by_redis_py_as_before(quota_proxy: Any, hotcache_config: Any) -> None:
    """No HELLO on RESP2: redis-py's CLIENT SETNAME stays; CLIENT SETINFO is still left out."""
    hotcache_config(REDIS_URL=f"{quota_proxy.url}?protocol=2")
    assert redis_backend.call("t", lambda r: r.ping()) is True
    db = _db(quota_proxy)
    assert _handshake(quota_proxy) == [("CLIENT", "SETNAME", "hotcache")] + ([("SELECT", str(db))] if db else [])
