"""The cached user and hotcache.sessions under ASGI on the native async path, against the real Redis: a warm
authenticated request reads the session and its user in one round trip (with the rate-limit decision in the same
pipeline), makes no database query and no thread hop of hotcache's; the gate opens from async code and the
fallbacks (the database) answer; the counts are those of the sync path."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from hotcache.backends import aredis
from hotcache.backends.health import OPEN, redis_gate
from hotcache.testing import count_redis
from tests.ratelimit.fixtures import async_client
from tests.support.aio import recording_queries, serve
from tests.support.hops import count_hops

User = get_user_model()
PROFILE = "/users/me/async/"
SYNC_PROFILE = "/users/me/"
STACK = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "hotcache.middleware.CachedAuthenticationMiddleware",
    "hotcache.middleware.RateLimitMiddleware",
]
RULE = {"name": "profile", "rate": "100/m", "key": "ip", "path": "/users/"}


@pytest.fixture(autouse=True)
def async_stack(settings: Any, hotcache_config: Any, transactional_db: Any) -> Any:
    from hotcache.testing import reset

    reset()
    settings.SESSION_ENGINE = "hotcache.sessions"
    settings.MIDDLEWARE = STACK
    settings.ROOT_URLCONF = "config.demo.urls"
    hotcache_config(RATELIMIT_RULES=[RULE])
    yield
    reset()


@pytest.fixture
def alice() -> Any:
    return User.objects.create_user(username=f"alice{uuid.uuid4().hex[:6]}", password="pw-1")


def address() -> str:
    n = uuid.uuid4().int
    return f"198.18.{n % 250}.{(n >> 8) % 250 + 1}"


def _warm_then_count(client: Any, n: int = 2) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """One request to warm this loop's connection and the Redis copies, then ``n`` counted ones."""

    async def run() -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        await client.get(PROFILE)
        responses, counts, hops, queries = [], [], [], []
        for _ in range(n):
            before = len(sql)
            with count_redis() as count, count_hops() as hopped:
                responses.append(await client.get(PROFILE))
            counts.append(count)
            hops.append(hopped)
            queries.append(sql[before:])
        return responses, counts, hops, queries

    with recording_queries() as sql:
        return serve(run())


def test_warm_authenticated_request_one_round_trip_no_query_no_hop(alice: Any) -> None:
    client = async_client(address())
    client.force_login(alice, backend="django.contrib.auth.backends.ModelBackend")
    responses, counts, hops, queries = _warm_then_count(client)
    for response, count, hopped, captured in zip(responses, counts, hops, queries, strict=True):
        assert response.json() == {"authenticated": True, "username": alice.username}
        assert captured == []
        assert hopped.hotcache() == []
        assert not [h for h in hopped if h.startswith("django.db")]
        # One pipeline: the rate-limit script and one MGET of the session's and the user's keys (this process knows
        # the session's user), exactly as the sync path (tests/sessions/test_combined.py).
        assert (count.round_trips, count.commands, count.billed) == (1, 2, 4)
        assert count.by_feature == {"ratelimit": 2}
        assert count.billed_by_feature == {"ratelimit": 4}
        assert count.events["sessions:hit"] == 1 and count.events["users:hit"] == 1


def test_async_counts_equal_sync_counts(alice: Any) -> None:
    ip = address()
    sync_client = Client()
    sync_client.force_login(alice, backend="django.contrib.auth.backends.ModelBackend")
    sync_client.get(SYNC_PROFILE, REMOTE_ADDR=ip)
    with count_redis() as sync_count:
        assert sync_client.get(SYNC_PROFILE, REMOTE_ADDR=ip).json()["username"] == alice.username
    client = async_client(address())
    client.force_login(alice, backend="django.contrib.auth.backends.ModelBackend")
    _, counts, _, _ = _warm_then_count(client, n=1)
    assert (counts[0].round_trips, counts[0].commands, counts[0].billed) == (
        sync_count.round_trips,
        sync_count.commands,
        sync_count.billed,
    )
    assert counts[0].billed_by_feature == sync_count.billed_by_feature


def test_session_and_user_in_one_round_trip_without_rate_limit(alice: Any, hotcache_config: Any) -> None:
    """No rule matches: auser() reads the session and its user in one command: one MGET of the four keys (this
    process knows the session's user), or session_user_read.lua for a session it has not seen."""
    hotcache_config(RATELIMIT_RULES=[])
    client = async_client(address())
    client.force_login(alice, backend="django.contrib.auth.backends.ModelBackend")
    responses, counts, hops, queries = _warm_then_count(client)
    for response, count, hopped, captured in zip(responses, counts, hops, queries, strict=True):
        assert response.json()["username"] == alice.username
        assert (count.round_trips, count.commands) == (1, 1)
        assert count.billed_by_feature == {"sessions": 1}  # the MGET
        assert captured == [] and hopped.hotcache() == []
    from hotcache.sessions import cache

    cache.forget_users_seen()  # as another process: the script (EVALSHA + two MGETs), which teaches this one the user

    async def unseen_then_seen() -> list[Any]:
        await aredis.acall("t", lambda r: r.ping())  # this loop's connection, outside the counts
        counted = []
        for _ in range(2):
            with count_redis() as count:
                assert (await client.get(PROFILE)).json()["username"] == alice.username
            counted.append(count.billed_by_feature)
        return counted

    assert serve(unseen_then_seen()) == [{"sessions": 3}, {"sessions": 1}]


def test_cold_session_and_user_filled_from_the_database_then_warm(alice: Any) -> None:
    """Redis copies absent: the session comes from the database (Django's async ORM) and the user from its loader,
    both written back; the next request is warm (no query)."""
    client = async_client(address())
    client.force_login(alice, backend="django.contrib.auth.backends.ModelBackend")
    # The set-up's sync calls run here, not on the loop.
    from hotcache.sessions import cache as session_cache
    from hotcache.testing import count_redis as counted
    from hotcache.users import invalidate_user

    session_cache.invalidate(client.session.session_key)
    invalidate_user(alice.pk)

    async def requests() -> tuple[Any, Any, Any, Any, Any]:
        with counted() as cold_count:
            cold_response = await client.get(PROFILE)
        assert len(sql) == 2  # the session row, then the user
        before = len(sql)
        with counted() as warm_count:
            warm_response = await client.get(PROFILE)
        return cold_response, cold_count, warm_response, warm_count, sql[before:]

    with recording_queries() as sql:
        cold_response, cold_count, warm_response, warm_count, warm_queries = serve(requests())
    assert cold_response.json()["username"] == warm_response.json()["username"] == alice.username
    assert cold_count.events["sessions:miss"] == 1 and cold_count.events["users:miss"] == 1
    assert warm_queries == []
    assert warm_count.events["sessions:hit"] == 1 and warm_count.events["users:hit"] == 1


def test_gate_opens_from_async_code_and_the_database_answers(alice: Any, redis_proxy: Any) -> None:
    """Redis dead: the first async call fails, the gate opens; the session and the user come from the database
    and the user stays logged in."""
    client = async_client(address())
    client.force_login(alice, backend="django.contrib.auth.backends.ModelBackend")

    async def run() -> tuple[list[Any], Any]:
        await client.get(PROFILE)
        redis_proxy.down()
        with count_redis() as during:
            responses = [await client.get(PROFILE) for _ in range(3)]
        return responses, during

    responses, during = serve(run())
    assert [r.json()["username"] for r in responses] == [alice.username] * 3
    assert redis_gate.snapshot().state == OPEN
    assert during.events["sessions:fallback"] == 3 and during.events["users:fallback"] == 3
    assert during.round_trips <= 1  # at most the one attempt that found Redis dead


def test_on_a_redis_cluster_the_combined_read_takes_the_sync_path_with_the_sync_counts(
    alice: Any, cluster_redis: Any, hotcache_config: Any
) -> None:
    """redis.asyncio.cluster is not wired: on a cluster, auser()'s session-and-user read is the sync one (each read
    on its node) in one worker thread, with the sync path's round trips and billed commands."""
    hotcache_config(RATELIMIT_RULES=[])
    sync_client = Client()
    sync_client.force_login(alice, backend="django.contrib.auth.backends.ModelBackend")
    sync_client.get(SYNC_PROFILE)
    with count_redis() as sync_count:
        assert sync_client.get(SYNC_PROFILE).json()["username"] == alice.username
    client = async_client(address())
    client.cookies = sync_client.cookies  # the same session: its keys and the user's on the same nodes
    responses, counts, hops, _ = _warm_then_count(client, n=1)
    assert responses[0].json()["username"] == alice.username
    assert (counts[0].round_trips, counts[0].commands, counts[0].billed) == (
        sync_count.round_trips,
        sync_count.commands,
        sync_count.billed,
    )
    assert hops[0].hotcache() == ["hotcache.sessions.combined.read_with_user"]
