"""One round trip per request for hotcache's middleware together (issue 19): with hotcache.sessions,
CachedAuthenticationMiddleware, RateLimitMiddleware and AnalyticsMiddleware (batched), a warm authenticated,
rate-limited, tracked request makes exactly one Redis round trip; each part keeps its gate, metering, denial,
outage fallback and lost-reply behaviour."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from hotcache import analytics
from hotcache.testing import count_redis
from tests.sessions.figures import request_keys, request_nodes
from tests.support.targets import nodes_holding, on_a_cluster

User = get_user_model()
PROFILE = "/users/me/"
STACK = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "hotcache.middleware.CachedAuthenticationMiddleware",
    "hotcache.middleware.RateLimitMiddleware",
    "hotcache.middleware.AnalyticsMiddleware",
]
RULE = {"name": "profile", "rate": "5/m", "key": "ip", "path": "/users/"}


@pytest.fixture(autouse=True)
def combined_stack(settings, hotcache_config):
    from hotcache.testing import reset

    reset()
    settings.MIDDLEWARE = STACK
    settings.ROOT_URLCONF = "config.demo.urls"
    # Page views batched: tracked in-process, written once per interval (0 round trips per request).
    hotcache_config(RATELIMIT_RULES=[RULE], ANALYTICS_BATCH_SECONDS=3600)
    yield
    analytics.flush_batch()
    reset()


@pytest.fixture
def alice():
    return User.objects.create_user(username="alice", password="pw-1")


def address() -> str:
    n = uuid.uuid4().int
    return f"198.18.{n % 250}.{(n >> 8) % 250 + 1}"


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


def test_warm_authenticated_rate_limited_tracked_request_is_one_round_trip(alice):
    client, ip = logged_in(alice), address()
    assert client.get(PROFILE, REMOTE_ADDR=ip).json()["username"] == "alice"  # fills the session and the user
    with CaptureQueriesContext(connection) as queries, count_redis() as redis:
        response = client.get(PROFILE, REMOTE_ADDR=ip)
    assert response.status_code == 200 and response.json()["username"] == "alice"
    assert response.has_header("RateLimit-Policy") or "ratelimit" not in response  # the decision was made
    assert queries.captured_queries == []
    # One pipeline: the rate-limit script and one MGET of the session's entry + version and the user's (this
    # process saw the session name alice when it filled it). On a cluster the session's and the user's MGETs
    # (different slots) ride with the script, each to its node: one round trip per node holding the keys.
    mgets = 2 if on_a_cluster() else 1
    assert redis.round_trips == request_nodes(client, alice, ip=ip) and redis.commands == 1 + mgets
    assert redis.events["ratelimit:allowed"] == 1
    assert redis.events["sessions:hit"] == 1 and redis.events["users:hit"] == 1
    assert redis.events["analytics:batched"] >= 0  # tracked in-process, nothing sent
    # Billed exactly: the rate-limit script for one rule 3 (as alone, docs/ratelimit.md), each MGET 1. The
    # pipeline's sent commands are metered under the feature that sends it (ratelimit).
    assert redis.billed == 3 + mgets
    assert redis.by_feature == {"ratelimit": 1 + mgets}
    assert redis.billed_by_feature == {"ratelimit": 3 + mgets}


def test_a_process_that_has_not_seen_the_session_reads_it_with_the_script(alice):
    """Another process (here: this one after forgetting) does not know which user the session names: the pipeline
    carries session_user_read.lua instead (EVALSHA + the session's MGET + the user's), still one round trip."""
    from hotcache.sessions import cache

    client, ip = logged_in(alice), address()
    assert client.get(PROFILE, REMOTE_ADDR=ip).json()["username"] == "alice"
    cache.forget_users_seen()
    with CaptureQueriesContext(connection) as queries, count_redis() as redis:
        response = client.get(PROFILE, REMOTE_ADDR=ip)
    assert response.json()["username"] == "alice" and queries.captured_queries == []
    assert redis.events["sessions:hit"] == 1 and redis.events["users:hit"] == 1
    if on_a_cluster():  # no script can read both slots: the session's MGET rides with the decision, then the user's
        session, _user, limit = request_keys(client, alice, ip=ip)
        assert redis.round_trips == nodes_holding(session, limit) + 1 and redis.commands == 3
        assert redis.billed == 5 and redis.billed_by_feature == {"ratelimit": 4, "users": 1}
    else:
        assert redis.round_trips == 1 and redis.commands == 2
        assert redis.billed == 6 and redis.billed_by_feature == {"ratelimit": 4, "sessions": 2}
    with count_redis() as redis:  # the script's read taught this process the user: back to the MGET
        assert client.get(PROFILE, REMOTE_ADDR=ip).json()["username"] == "alice"
    assert redis.billed == (5 if on_a_cluster() else 4)  # a cluster: the session's and the user's MGETs


def test_denial_is_a_429_in_the_same_single_round_trip(alice):
    client, ip = logged_in(alice), address()
    assert [client.get(PROFILE, REMOTE_ADDR=ip).status_code for _ in range(5)] == [200] * 5
    with count_redis() as redis:
        response = client.get(PROFILE, REMOTE_ADDR=ip)
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1
    assert redis.round_trips == request_nodes(client, alice, ip=ip) and redis.events["ratelimit:denied"] == 1
    # Known denials are answered by the deny cache: no round trip for the rate limit; the view is not run.
    with count_redis() as redis:
        assert client.get(PROFILE, REMOTE_ADDR=ip).status_code == 429
    assert redis.round_trips == 0


def test_redis_down_serves_the_user_from_the_database(alice, redis_down):
    client = logged_in(alice)
    with count_redis() as redis:
        response = client.get(PROFILE, REMOTE_ADDR=address())
    assert response.status_code == 200 and response.json()["username"] == "alice"
    # The login's save found Redis refusing connections: the gate is open, nothing is attempted. Each part falls
    # back as it does alone: the rate limit to its outage policy, the session and the user to the database.
    assert redis.commands == 0 and redis.round_trips == 0
    assert redis.events["ratelimit:degraded_local"] == 1 and redis.events["ratelimit:allowed"] == 1
    assert redis.events["sessions:fallback"] == 1 and redis.events["users:fallback"] == 1


@pytest.mark.parametrize("mode", ["apply", "drop"])
def test_a_lost_reply_on_the_combined_round_trip(alice, lost_reply_proxy, clock, settings, mode):
    client, ip = logged_in(alice), address()
    assert client.get(PROFILE, REMOTE_ADDR=ip).status_code == 200  # warm
    lost_reply_proxy.arm(b"EVALSHA", mode)
    with count_redis() as redis:
        response = client.get(PROFILE, REMOTE_ADDR=ip)
    assert lost_reply_proxy.faults == 1
    # The decision falls to the outage policy (never counted twice), the session and user to the database.
    assert response.status_code == 200 and response.json()["username"] == "alice"
    assert redis.events["ratelimit:redis_error"] == 1
    clock.advance(settings.HOTCACHE.get("HEALTH_COOLDOWN", 5.0) + 1)
    assert client.get(PROFILE, REMOTE_ADDR=ip).json()["username"] == "alice"  # back (the limiter settles its debts)
    with count_redis() as redis:
        assert client.get(PROFILE, REMOTE_ADDR=ip).json()["username"] == "alice"
    assert redis.round_trips == request_nodes(client, alice, ip=ip)  # and on the combined path again


def test_an_owed_user_invalidation_is_replayed_before_the_user_is_served(alice):
    from hotcache.users import cache as user_cache
    from hotcache.users.entries import user_id

    client, ip = logged_in(alice), address()
    client.get(PROFILE, REMOTE_ADDR=ip)
    User.objects.filter(pk=alice.pk).update(first_name="Alicia")  # behind the cache's back
    user_cache.pending_invalidations.update([user_id(alice.pk, User).key])  # as after an outage
    with count_redis() as redis:
        response = client.get(PROFILE, REMOTE_ADDR=ip)
    assert response.json()["first_name"] == "Alicia"  # the combined read's user entry was not used
    assert not user_cache.pending_invalidations
    assert redis.events["users:miss"] == 1


def test_asgi_request_is_one_round_trip_too(alice):
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    ip = address()
    client = AsyncClient(REMOTE_ADDR=ip)
    async_to_sync(client.aforce_login)(alice, backend="django.contrib.auth.backends.ModelBackend")
    async_to_sync(client.get)("/users/me/async/")
    with count_redis() as redis:
        response = async_to_sync(client.get)("/users/me/async/")
    assert response.json() == {"authenticated": True, "username": "alice"}
    # 1; on a cluster one per node holding the session's, the user's and the decision's keys
    # (the address the rate limiter keyed on: an ASGI request's REMOTE_ADDR comes from the scope's client)
    seen = response.asgi_request.META["REMOTE_ADDR"]
    assert redis.round_trips == request_nodes(client, alice, ip=seen) and redis.events["ratelimit:allowed"] == 1


def test_without_the_user_middleware_the_session_is_read_alone(alice, settings):
    settings.MIDDLEWARE = [m for m in STACK if "CachedAuthentication" not in m] + [
        "django.contrib.auth.middleware.AuthenticationMiddleware"
    ]
    client, ip = logged_in(alice), address()
    client.get(PROFILE, REMOTE_ADDR=ip)
    with count_redis() as redis:
        assert client.get(PROFILE, REMOTE_ADDR=ip).json()["username"] == "alice"
    # The session's plain MGET and the rate-limit script: separately installable, nothing combined.
    assert redis.round_trips == 2 and redis.by_feature == {"sessions": 1, "ratelimit": 1}
