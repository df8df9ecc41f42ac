"""The per-request combined read on a Redis Cluster (issues 18 and 19): the session, its cached user and the
rate-limit decision each read on its own node, all nodes written before any is read (one round trip per node, in
parallel), with the database untouched on a warm authenticated request."""

from __future__ import annotations

import uuid

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from hotcache import analytics
from hotcache.backends import redis as redis_backend
from hotcache.ratelimit import Limit, limit_keys
from hotcache.sessions import combined
from hotcache.sessions.entries import entry_key
from hotcache.testing import count_redis, reset
from hotcache.users import entries as user_entries

User = get_user_model()
PROFILE = "/users/me/"
BASE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "hotcache.middleware.CachedAuthenticationMiddleware",
]
RULE = {"name": "profile", "rate": "50/m", "key": "ip", "path": "/users/"}


@pytest.fixture(autouse=True)
def stack(cluster_redis, settings, hotcache_config, transactional_db):
    reset()
    combined.hints.clear()
    settings.SESSION_ENGINE = "hotcache.sessions"
    settings.MIDDLEWARE = [*BASE, "hotcache.middleware.RateLimitMiddleware"]
    settings.ROOT_URLCONF = "config.demo.urls"
    hotcache_config(RATELIMIT_RULES=[RULE], ANALYTICS_BATCH_SECONDS=3600)
    yield
    analytics.flush_batch()
    combined.hints.clear()
    reset()


@pytest.fixture
def alice():
    return User.objects.create_user(username=f"alice-{uuid.uuid4().hex[:8]}", password="pw-1")


def address() -> str:
    n = uuid.uuid4().int
    return f"198.18.{n % 250}.{(n >> 8) % 250 + 1}"


def node(key: str) -> str:
    return str(redis_backend.get_client().get_node_from_key(key).name)


def logged_in(user) -> tuple[Client, str, str]:
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    session_key = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    uid = user_entries.user_id(user.pk, User).key
    return client, entry_key(session_key), user_entries.entry_key(uid)


def test_warm_request_reads_session_user_and_decision_in_one_round_trip_per_node(alice):
    client, session, user = logged_in(alice)
    ip = address()
    assert client.get(PROFILE, REMOTE_ADDR=ip).json()["username"] == alice.username  # fills; the user is learned
    nodes = {node(session), node(user), node(limit_keys(Limit("profile", ip, 50, 60))[0])}
    with CaptureQueriesContext(connection) as queries, count_redis() as redis:
        response = client.get(PROFILE, REMOTE_ADDR=ip)
    assert response.status_code == 200 and response.json()["username"] == alice.username
    assert queries.captured_queries == []
    # the decision's EVALSHA, the session's MGET, the user's MGET: each to its node, all sent before any reply
    assert redis.commands == 3
    assert redis.round_trips == len(nodes)
    assert redis.events["ratelimit:allowed"] == 1
    assert redis.events["sessions:hit"] == 1 and redis.events["users:hit"] == 1


def test_without_rate_limiting_the_session_and_user_are_read_together(alice, settings):
    settings.MIDDLEWARE = BASE
    client, session, user = logged_in(alice)
    assert client.get(PROFILE).json()["username"] == alice.username
    with CaptureQueriesContext(connection) as queries, count_redis() as redis:
        assert client.get(PROFILE).json()["username"] == alice.username
    assert queries.captured_queries == []
    assert redis.commands == 2  # two MGETs
    assert redis.round_trips == len({node(session), node(user)})
    assert redis.events["sessions:hit"] == 1 and redis.events["users:hit"] == 1


def test_a_session_this_process_has_not_read_reads_its_user_afterwards(alice, settings):
    settings.MIDDLEWARE = BASE
    client, _, _ = logged_in(alice)
    assert client.get(PROFILE).json()["username"] == alice.username
    combined.hints.clear()  # another process: it does not know which user the session names
    with CaptureQueriesContext(connection) as queries, count_redis() as redis:
        assert client.get(PROFILE).json()["username"] == alice.username
    assert queries.captured_queries == []
    assert redis.round_trips == 2  # the session, then the user it names
    assert redis.events["sessions:hit"] == 1 and redis.events["users:hit"] == 1
    with count_redis() as redis:
        assert client.get(PROFILE).json()["username"] == alice.username
    assert redis.commands == 2  # learned: together again


def test_a_wrong_guess_is_never_used(alice, settings):
    """The guess names another user (a session logged in as someone else since): the verified session entry
    decides, the guessed user's values are dropped and the right user is read."""
    settings.MIDDLEWARE = BASE
    bob = User.objects.create_user(username=f"bob-{uuid.uuid4().hex[:8]}", password="pw-2")
    client, _, _ = logged_in(alice)
    assert client.get(PROFILE).json()["username"] == alice.username
    session_key = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    Client().force_login(bob, backend="django.contrib.auth.backends.ModelBackend")
    combined.hints._items[session_key] = user_entries.user_id(bob.pk, User).key
    assert client.get(PROFILE).json()["username"] == alice.username
    assert combined.hints.get(session_key) == user_entries.user_id(alice.pk, User).key
