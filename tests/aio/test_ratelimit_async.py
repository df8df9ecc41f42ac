"""Rate limiting under ASGI on the native async path (hotcache.backends.aredis), against the real Redis: the same
round trips, commands and billed commands per request as the sync path, no thread hop of hotcache's, the gate
and the outage policies from async code, and the lost-reply answer."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.test import Client

from hotcache.backends import aredis
from hotcache.backends.health import OPEN, redis_gate
from hotcache.testing import count_redis
from tests.ratelimit.fixtures import async_client, ratelimit_middleware  # noqa: F401 - fixture
from tests.support.aio import serve
from tests.support.hops import count_hops

pytestmark = pytest.mark.usefixtures("ratelimit_middleware")


def ip() -> str:
    n = uuid.uuid4().int
    return f"198.18.{n % 250}.{(n >> 8) % 250 + 1}"


@pytest.fixture
def rules(hotcache_config: Any) -> Any:
    def apply(*items: dict[str, Any], **extra: Any) -> None:
        hotcache_config(RATELIMIT_RULES=list(items), **extra)

    return apply


def _counted(path: str, remote: str, n: int = 3) -> tuple[list[Any], list[Any], list[list[str]]]:
    """``n`` requests through the ASGI handler (after one to warm the loop's connection): responses, counts, hops."""
    c = async_client(remote)

    async def run() -> tuple[list[Any], list[Any], list[list[str]]]:
        await c.get(path)  # this loop's connection and the script's first load
        responses, counts, hops = [], [], []
        for _ in range(n):
            with count_redis() as count, count_hops() as hopped:
                responses.append(await c.get(path))
            counts.append(count)
            hops.append(hopped)
        return responses, counts, hops

    return serve(run())


def test_async_request_costs_what_a_sync_request_costs(rules: Any) -> None:
    """One rule: one round trip, one command (EVALSHA), the same billed commands as the sync path, exactly."""
    rules({"name": "one", "rate": "100/m", "key": "ip"})
    c, addr = Client(), ip()
    c.get("/other/", REMOTE_ADDR=addr)  # warm: connection, script load
    with count_redis() as sync_count:
        assert c.get("/other/", REMOTE_ADDR=addr).status_code == 200
    responses, counts, _ = _counted("/async/", ip())
    assert [r.status_code for r in responses] == [200, 200, 200]
    for count in counts:
        assert (count.round_trips, count.commands, count.billed) == (
            sync_count.round_trips,
            sync_count.commands,
            sync_count.billed,
        )
        assert (count.round_trips, count.commands) == (1, 1)
        assert count.billed == sync_count.billed > 1  # EVALSHA and the commands the script ran, from its prelude


def test_three_rules_one_round_trip(rules: Any) -> None:
    rules(
        {"name": "burst", "rate": "50/s", "key": "ip"},
        {"name": "minute", "rate": "100/m", "key": "ip"},
        {"name": "hour", "rate": "1000/h", "key": "ip"},
    )
    _, counts, _ = _counted("/async/", ip())
    assert {(c.round_trips, c.commands) for c in counts} == {(1, 1)}


def test_no_thread_hop_of_hotcache_and_none_beyond_the_bare_request(rules: Any) -> None:
    """Django's own async handling hops for its sync parts (request signals, response close); hotcache adds none."""
    rules({"name": "only-other", "rate": "100/m", "key": "ip", "path": "/other/"})
    _, _, bare = _counted("/async/", ip())  # no rule matches: the middleware sends nothing
    rules({"name": "every", "rate": "100/m", "key": "ip"})
    _, counts, limited = _counted("/async/", ip())
    assert all(c.round_trips == 1 for c in counts)
    for hops, bare_hops in zip(limited, bare, strict=True):
        assert hops.hotcache() == []
        assert sorted(hops) == sorted(bare_hops)


def test_denial_and_headers_on_the_async_path(rules: Any) -> None:
    rules({"name": "two", "rate": "2/m", "key": "ip", "headers": True})
    c = async_client(ip())

    async def run() -> list[Any]:
        return [await c.get("/async/") for _ in range(3)]

    first, _, denied = serve(run())
    assert denied.status_code == 429 and int(denied["Retry-After"]) >= 1
    assert first["RateLimit"].startswith('"two";r=1;')


def test_async_decorated_view_no_hop_one_round_trip(rules: Any) -> None:
    """@ratelimit on an async view: get_usage awaited on the loop (aget_usage), one round trip, no hop."""
    responses, counts, hops = _counted("/adeco/", ip(), n=3)  # rate 2/m; the warm-up request counted as one
    assert [r.status_code for r in responses] == [200, 429, 429]
    assert [(c.round_trips, c.commands) for c in counts] == [(1, 1), (1, 1), (0, 0)]  # then the deny cache answers
    assert all(h.hotcache() == [] for h in hops)


def test_the_gate_opens_from_async_code_and_the_outage_policy_answers(rules: Any, redis_proxy: Any) -> None:
    """Redis dead: the first async call fails (connection refused), the gate opens, the next requests are answered
    by the outage policy without touching Redis."""
    rules({"name": "open", "rate": "1/m", "key": "ip", "policy": "open"})
    c = async_client(ip())

    async def run() -> tuple[list[int], Any, Any]:
        assert (await c.get("/async/")).status_code == 200  # Redis answers
        redis_proxy.down()
        with count_redis() as during:
            codes = [(await c.get("/async/")).status_code for _ in range(3)]
        return codes, during, redis_gate.snapshot()

    codes, during, gate = serve(run())
    assert codes == [200, 200, 200]  # admitted by the "open" policy, though the rate is 1/m
    assert gate.state == OPEN and gate.opens == 1
    assert during.events["ratelimit:allowed"] == 3
    assert during.events["ratelimit:gate_rejected"] == 2  # one failed attempt, then the gate answers


def test_lost_reply_is_maybe_applied(rules: Any) -> None:
    """A reply lost after the EVALSHA reached Redis says maybe_applied, as on the sync path."""
    from hotcache.exceptions import RedisUnavailable
    from hotcache.ratelimit import core

    async def run() -> RedisUnavailable:
        connection = aredis.client()
        assert connection is not None

        async def sent_then_lost(r: Any) -> Any:
            await r.ping()  # a connection, then a command sent...
            original = r.connection_pool.connection_class.read_response

            async def lost(self: Any, *args: Any, **kwargs: Any) -> Any:
                raise ConnectionError("reply lost")  # ...whose reply never comes

            r.connection_pool.connection_class.read_response = lost
            try:
                return await aredis.run_script(core._SCRIPT, r, ["k"], [0])
            finally:
                r.connection_pool.connection_class.read_response = original

        try:
            await aredis.acall("ratelimit", sent_then_lost)
        except RedisUnavailable as exc:
            return exc
        raise AssertionError("no failure")

    exc = serve(run())
    assert exc.maybe_applied and not exc.answered


@pytest.mark.django_db(transaction=True)
def test_a_rule_keyed_on_the_user_counts_each_signed_in_user_apart_under_asgi(rules: Any, settings: Any) -> None:
    """The async middleware resolves ``request.auser()`` on the loop when a rule keys on the user (answered once
    per settings, not per request): two users behind one address have a budget each."""
    from django.contrib.auth import get_user_model

    settings.MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "hotcache.middleware.CachedAuthenticationMiddleware",
        "hotcache.middleware.RateLimitMiddleware",
    ]
    rules({"name": f"per-user-{uuid.uuid4().hex[:6]}", "rate": "2/m", "key": "user"})
    addr, users = ip(), get_user_model().objects
    alice = users.create_user(username=f"a{uuid.uuid4().hex[:6]}", password="pw")
    bob = users.create_user(username=f"b{uuid.uuid4().hex[:6]}", password="pw")
    clients = []
    for user in (alice, bob):
        client = async_client(addr)
        client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
        clients.append(client)

    async def run() -> tuple[list[int], list[int]]:
        first = [(await clients[0].get("/async/")).status_code for _ in range(3)]
        second = [(await clients[1].get("/async/")).status_code for _ in range(2)]
        return first, second

    assert serve(run()) == ([200, 200, 429], [200, 200])
