"""AnalyticsMiddleware and the page view under ASGI on the native async path, against the real Redis: the same
round trip, commands and billed commands as the sync path, no thread hop of hotcache's, exactly once across a lost
reply (the loop's writers settle their doubts), the outage buffer when the gate is open, and all three of hotcache's
middleware in one round trip."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from hotcache import analytics
from hotcache.analytics import _hot
from hotcache.analytics._atrack import atrack_event
from hotcache.analytics._events import Event
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import OPEN, redis_gate
from hotcache.conf import hotcache_settings
from hotcache.testing import count_redis
from tests.analytics.fixtures import _empty_fallback_buffer  # noqa: F401 - autouse fixture
from tests.ratelimit.fixtures import async_client
from tests.support.aio import recording_queries, serve
from tests.support.hops import count_hops

PAGE = "/async/"  # tests.ratelimit.urls: plain views, async and sync
SYNC_PAGE = "/other/"
PROFILE = "/users/me/async/"


@pytest.fixture(autouse=True)
def analytics_stack(settings: Any) -> Any:
    from hotcache.testing import reset

    reset()
    settings.MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "hotcache.middleware.AnalyticsMiddleware",
    ]
    settings.ROOT_URLCONF = "tests.ratelimit.urls"
    yield
    reset()


def address() -> str:
    n = uuid.uuid4().int
    return f"198.18.{n % 250}.{(n >> 8) % 250 + 1}"


def _hour_total(raw_redis: Any, key_prefix: str) -> int:
    """The hour's counts in every bucket (KEY_BUCKETS may spread them: HOTCACHE_TEST_KEY_BUCKETS)."""
    from hotcache import clock as hc_clock
    from hotcache.analytics._keys import buckets, hour_key

    hour = hc_clock.utcnow().strftime("%Y%m%d%H")
    keys = {hour_key(hour)} | {hour_key(hour, tag) for tag in buckets()}
    return sum(int(v) for k in keys for v in raw_redis.hgetall(k).values())


def test_a_page_view_costs_what_the_sync_one_costs_with_no_hop() -> None:
    sync_client = Client()
    sync_client.get(SYNC_PAGE, REMOTE_ADDR=address())  # warm: connection, script load
    with count_redis() as sync_count:
        assert sync_client.get(SYNC_PAGE, REMOTE_ADDR=address()).status_code == 200
    assert sync_count.events["analytics:tracked"] == 1
    client = async_client(address())

    async def run() -> list[tuple[Any, Any, Any]]:
        await client.get(PAGE)
        out = []
        for _ in range(2):
            with count_redis() as count, count_hops() as hops:
                response = await client.get(PAGE)
            out.append((response, count, hops))
        return out

    for response, count, hops in serve(run()):
        assert response.status_code == 200
        assert count.events["analytics:tracked"] == 1
        assert (count.round_trips, count.commands, count.billed) == (
            sync_count.round_trips,
            sync_count.commands,
            sync_count.billed,
        ) == (1, 1, sync_count.billed)
        assert hops.hotcache() == []


def test_a_lost_reply_counts_exactly_once_through_the_loops_writers(
    lost_reply_proxy: Any, raw_redis: Any, key_prefix: str, clock: Any
) -> None:
    """The reply of an applied page view is lost: in doubt on its writer; the next page view on the loop takes that
    writer, settles the doubt first (applied: not counted again) and is counted itself."""
    raw_redis.script_load(_hot.TRACK.body)
    ev = Event("page_view", "/a", "", 1)

    async def run() -> tuple[str, str, str, Any]:
        first = await atrack_event(ev)
        lost_reply_proxy.arm(_hot.TRACK.sha.encode(), "apply")
        lost = await atrack_event(ev)
        clock.advance(float(hotcache_settings.HEALTH_COOLDOWN) + 1)  # the gate probes again
        with count_redis() as settling:
            after = await atrack_event(ev)
        return first, lost, after, settling

    first, lost, after, settling = serve(run())
    assert (first, lost, after) == ("redis", "in_doubt", "redis")
    assert settling.events["analytics:in_doubt_applied"] == 1
    assert settling.events["analytics:in_doubt_replayed"] == 0
    assert not _hot.doubts
    assert _hour_total(raw_redis, key_prefix) == 3  # three page views, not four


def test_the_gate_opens_from_async_code_and_the_outage_buffer_takes_page_views(redis_proxy: Any) -> None:
    client = async_client(address())

    async def run() -> tuple[list[int], Any]:
        await client.get(PAGE)
        redis_proxy.down()
        with count_redis() as during:
            codes = [(await client.get(PAGE)).status_code for _ in range(3)]
        return codes, during

    codes, during = serve(run())
    assert codes == [200, 200, 200]
    assert redis_gate.snapshot().state == OPEN
    # The proxy closed the idle connection: seen before the first page view, that one finds no Redis (the outage
    # buffer); seen only after its EVALSHA went out, its reply is lost (in doubt, settled later). Either way the
    # other two go to the outage buffer, and no page view is counted twice or lost.
    in_doubt, buffered = during.events["analytics:in_doubt"], during.events["analytics:fallback"]
    assert in_doubt + buffered == 3 and in_doubt <= 1
    assert during.events["analytics:gate_rejected"] == 2  # one failed attempt, then the gate answers


@pytest.mark.django_db(transaction=True)
def test_all_three_middleware_one_round_trip_no_query_no_hop(settings: Any, hotcache_config: Any) -> None:
    """hotcache.sessions, CachedAuthenticationMiddleware, RateLimitMiddleware and AnalyticsMiddleware (batched) on an
    async request: one round trip, as on the sync path (tests/sessions/test_combined.py)."""
    settings.SESSION_ENGINE = "hotcache.sessions"
    settings.ROOT_URLCONF = "config.demo.urls"
    settings.MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "hotcache.middleware.CachedAuthenticationMiddleware",
        "hotcache.middleware.RateLimitMiddleware",
        "hotcache.middleware.AnalyticsMiddleware",
    ]
    hotcache_config(
        RATELIMIT_RULES=[{"name": "profile", "rate": "100/m", "key": "ip", "path": "/users/"}],
        ANALYTICS_BATCH_SECONDS=3600,
    )
    user = get_user_model().objects.create_user(username=f"u{uuid.uuid4().hex[:6]}", password="pw")
    client = async_client(address())
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")

    async def run() -> list[tuple[Any, Any, Any, int]]:
        await client.get(PROFILE)
        out = []
        for _ in range(2):
            before = len(sql)
            with count_redis() as count, count_hops() as hops:
                response = await client.get(PROFILE)
            out.append((response, count, hops, len(sql) - before))
        return out

    with recording_queries() as sql:
        results = serve(run())
    for response, count, hops, queries in results:
        assert response.json()["username"] == user.username
        assert (count.round_trips, count.commands, count.billed) == (1, 2, 4)  # as sync: test_combined
        assert count.events["analytics:batched"] == 1
        assert queries == 0 and hops.hotcache() == []
    analytics.flush_batch()
    redis_backend.reset()
