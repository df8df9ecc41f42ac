"""A Redis outage loses no session and logs nobody out: reads fall back to the database while the gate is open,
logins during it persist, and once Redis answers hotcache goes back to it, never serving a stale copy."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from hotcache.sessions import SessionStore, cache
from hotcache.sessions.entries import decode, entry_key
from hotcache.testing import count_redis

User = get_user_model()
PROFILE = "/users/me/"


@pytest.fixture(autouse=True)
def cached_stack(settings):
    settings.MIDDLEWARE = [
        "hotcache.middleware.CachedAuthenticationMiddleware"
        if m == "django.contrib.auth.middleware.AuthenticationMiddleware"
        else m
        for m in settings.MIDDLEWARE
    ]
    settings.ROOT_URLCONF = "config.demo.urls"


def back_up(redis_proxy, clock, settings):
    redis_proxy.up()
    clock.advance(settings.HOTCACHE.get("HEALTH_COOLDOWN", 5.0) + 1)


def test_sessions_from_before_the_outage_load_from_the_database(redis_proxy, clock, settings):
    user = User.objects.create_user("alice", password="pw")
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    assert client.get(PROFILE).status_code == 200
    redis_proxy.down()
    for _ in range(3):
        with count_redis() as redis:
            assert client.get(PROFILE).json()["username"] == "alice"
        assert redis.events["sessions:fallback"] == 1
    back_up(redis_proxy, clock, settings)
    client.get(PROFILE)
    with CaptureQueriesContext(connection) as queries, count_redis() as redis:
        assert client.get(PROFILE).json()["username"] == "alice"
    assert queries.captured_queries == [] and redis.events["sessions:hit"] == 1


def test_logins_during_the_outage_persist_and_return_to_redis(redis_proxy, clock, settings, raw_redis):
    User.objects.create_user("bob", password="pw")
    redis_proxy.down()
    client = Client()
    assert client.login(username="bob", password="pw")
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert client.get(PROFILE).json()["username"] == "bob"
    assert not raw_redis.exists(entry_key(key))
    back_up(redis_proxy, clock, settings)
    assert client.get(PROFILE).json()["username"] == "bob"  # a miss: read from the database, filled
    assert raw_redis.exists(entry_key(key))
    with CaptureQueriesContext(connection) as queries:
        assert client.get(PROFILE).json()["username"] == "bob"
    assert queries.captured_queries == []


def test_a_write_during_the_outage_is_never_shadowed_by_the_old_copy(redis_proxy, clock, settings, raw_redis):
    s = SessionStore()
    s["cart"] = ["book"]
    s.save()
    redis_proxy.down()
    s["cart"] = ["book", "pen"]
    s.save()  # the database has it; Redis still holds the old copy, and this process owes its invalidation
    assert s.session_key in cache.pending_invalidations
    assert SessionStore(s.session_key)["cart"] == ["book", "pen"]
    back_up(redis_proxy, clock, settings)
    assert SessionStore(s.session_key)["cart"] == ["book", "pen"]  # invalidated first, then read
    assert not cache.pending_invalidations
    assert decode(s.session_key, raw_redis.get(entry_key(s.session_key))) is not None  # refilled


def test_a_logout_during_the_outage_stays_a_logout(redis_proxy, clock, settings, raw_redis):
    user = User.objects.create_user("carol", password="pw")
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    key = client.cookies[settings.SESSION_COOKIE_NAME].value

    def replayed() -> int:  # a copy of the cookie, sent again however often the server clears it
        thief = Client()
        thief.cookies[settings.SESSION_COOKIE_NAME] = key
        return thief.get(PROFILE).status_code

    assert replayed() == 200
    redis_proxy.down()
    client.logout()
    assert replayed() == 401
    back_up(redis_proxy, clock, settings)
    assert replayed() == 401
    assert not raw_redis.exists(entry_key(key))


@pytest.mark.parametrize("mode", ["apply", "drop"])
def test_a_save_whose_reply_was_lost_is_not_served_stale(mode, lost_reply_proxy, clock, settings, raw_redis):
    """The reservation runs in Redis ("apply") or never arrives ("drop", the old copy stays); either way no reply."""
    s = SessionStore()
    s["v"] = 1
    s.save()
    lost_reply_proxy.arm(b"EVALSHA", mode)
    s["v"] = 2
    s.save()
    assert lost_reply_proxy.faults == 1
    assert s.session_key in cache.pending_invalidations
    assert SessionStore(s.session_key)["v"] == 2  # the gate is open: from the database
    clock.advance(settings.HOTCACHE.get("HEALTH_COOLDOWN", 5.0) + 1)
    assert SessionStore(s.session_key)["v"] == 2  # the owed invalidation ran first
    assert not cache.pending_invalidations
    assert SessionStore(s.session_key)["v"] == 2  # and the refilled copy is the new one


def test_redis_refusing_connections_from_the_start(redis_down):
    s = SessionStore()
    s["v"] = 1
    s.save()
    with count_redis() as redis:
        assert SessionStore(s.session_key)["v"] == 1
    assert redis.commands == 0  # the gate is open: no attempt, straight to the database
    s.delete()
    assert SessionStore(s.session_key).load() == {}
