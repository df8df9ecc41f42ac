"""Whole requests: hotcache.sessions + CachedAuthenticationMiddleware serve a warm authenticated request with no
database query; logins, logouts and session writes behave as with Django's own engines."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext

from hotcache.sessions.entries import entry_key
from hotcache.testing import count_redis
from tests.sessions.figures import request_nodes
from tests.support.targets import on_a_cluster

User = get_user_model()
PROFILE = "/users/me/"
DJANGO_AUTH_MW = "django.contrib.auth.middleware.AuthenticationMiddleware"
OUR_MW = "hotcache.middleware.CachedAuthenticationMiddleware"


@pytest.fixture(autouse=True)
def cached_stack(settings):
    settings.MIDDLEWARE = [OUR_MW if m == DJANGO_AUTH_MW else m for m in settings.MIDDLEWARE]
    settings.ROOT_URLCONF = "config.demo.urls"


@pytest.fixture
def alice():
    return User.objects.create_user(username="alice", password="pw-1")


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


def test_warm_authenticated_request_makes_no_database_query(alice):
    client = logged_in(alice)
    assert client.get(PROFILE).json()["username"] == "alice"  # fills the cached user
    with CaptureQueriesContext(connection) as queries, count_redis() as redis:
        response = client.get(PROFILE)
    assert response.json() == {
        "authenticated": True,
        "id": alice.pk,
        "username": "alice",
        "first_name": "",
        "is_staff": False,
    }
    assert queries.captured_queries == []
    # This process filled the session, so it knows the user the entry names: one MGET of the session's entry
    # and version and the user's entry and version: 1 command sent, 1 round trip, 1 billed. On a cluster (the two
    # hash to different slots) the session's MGET and the user's, sent together: one round trip per node.
    sent = 2 if on_a_cluster() else 1
    assert redis.round_trips == request_nodes(client, alice) and redis.commands == sent and redis.billed == sent
    assert redis.by_feature == {"sessions": sent}
    assert redis.events["sessions:hit"] == 1 and redis.events["users:hit"] == 1


def test_a_session_this_process_has_not_seen_is_read_with_its_user_by_the_script(alice):
    """A process that has not seen the session (forgotten here) runs session_user_read.lua: the session's MGET
    (entry + version), then the user's MGET named by the entry's `u`: 1 round trip, 3 billed (EVALSHA + 2 MGET)."""
    from hotcache.sessions import cache

    client = logged_in(alice)
    assert client.get(PROFILE).json()["username"] == "alice"
    cache.forget_users_seen()
    with CaptureQueriesContext(connection) as queries, count_redis() as redis:
        assert client.get(PROFILE).json()["username"] == "alice"
    assert queries.captured_queries == []
    if on_a_cluster():  # no script can read both slots: the session, then the user it names (as without combining)
        assert (redis.round_trips, redis.commands, redis.billed) == (2, 2, 2)
    else:
        assert redis.round_trips == 1 and redis.commands == 1 and redis.billed == 3
    assert redis.events["sessions:hit"] == 1 and redis.events["users:hit"] == 1
    with count_redis() as redis:
        assert client.get(PROFILE).json()["username"] == "alice"
    assert redis.billed == (2 if on_a_cluster() else 1)  # learned: one MGET (a cluster: one per slot, together)
    assert redis.round_trips == request_nodes(client, alice)


def test_a_wrong_remembered_user_is_never_served(alice):
    """The remembered user is only a hint of which keys to read: when the entry names another user (here a hint
    planted for bob), the user read with it is not used; the user is read on its own and alice is served."""
    from hotcache.sessions import cache

    bob = User.objects.create_user(username="bob", password="pw-2")
    client = logged_in(alice)
    assert client.get(PROFILE).json()["username"] == "alice"
    logged_in(bob).get(PROFILE)  # bob's cached entry exists
    key = client.cookies[settings_cookie()].value
    cache.remember_user(key, str(bob.pk))
    with CaptureQueriesContext(connection) as queries, count_redis() as redis:
        assert client.get(PROFILE).json()["username"] == "alice"
    assert queries.captured_queries == []
    assert redis.events["sessions:hit"] == 1 and redis.events["users:hit"] == 1
    if on_a_cluster():  # the session's and bob's MGETs together (a round trip per node), then alice's own
        assert redis.round_trips == request_nodes(client, bob) + 1 and redis.billed == 3
    else:
        assert redis.round_trips == 2 and redis.billed == 2  # the hinted MGET, then alice's own MGET
    with count_redis() as redis:
        assert client.get(PROFILE).json()["username"] == "alice"
    assert redis.billed == (2 if on_a_cluster() else 1)  # the hint corrected from the verified entry


def settings_cookie() -> str:
    from django.conf import settings

    return str(settings.SESSION_COOKIE_NAME)


def test_warm_async_request_makes_no_database_query(alice):
    client = AsyncClient()
    async_to_sync(client.aforce_login)(alice, backend="django.contrib.auth.backends.ModelBackend")
    async_to_sync(client.get)("/users/me/async/")
    with CaptureQueriesContext(connection) as queries, count_redis() as redis:
        response = async_to_sync(client.get)("/users/me/async/")
    assert response.json() == {"authenticated": True, "username": "alice"}
    assert queries.captured_queries == []
    assert redis.round_trips == request_nodes(client, alice)  # 1; on a cluster one per node holding its keys


def test_login_through_the_login_view_persists_in_both_stores(alice, raw_redis, settings):
    client = Client()
    assert client.login(username="alice", password="pw-1")
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert Session.objects.filter(session_key=key).exists()
    assert raw_redis.exists(entry_key(key))
    assert client.get(PROFILE).json()["username"] == "alice"


def test_logout_deletes_both_copies_and_the_old_cookie_is_anonymous(alice, raw_redis, settings):
    client = logged_in(alice)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    stolen = Client()
    stolen.cookies[settings.SESSION_COOKIE_NAME] = key
    assert stolen.get(PROFILE).status_code == 200
    client.logout()
    assert not raw_redis.exists(entry_key(key))
    assert not Session.objects.filter(session_key=key).exists()
    assert stolen.get(PROFILE).status_code == 401


def test_password_change_elsewhere_logs_the_session_out(alice):
    client = logged_in(alice)
    assert client.get(PROFILE).status_code == 200
    alice.set_password("pw-2")
    alice.save()
    assert client.get(PROFILE).status_code == 401


def test_save_every_request_writes_the_database_and_keeps_redis_current(alice, settings, raw_redis):
    settings.SESSION_SAVE_EVERY_REQUEST = True
    client = logged_in(alice)
    client.get(PROFILE)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    before = Session.objects.get(session_key=key).expire_date
    with CaptureQueriesContext(connection) as queries:
        assert client.get(PROFILE).status_code == 200
    writes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(writes) == 1 and "django_session" in writes[0]
    assert Session.objects.get(session_key=key).expire_date >= before
    assert raw_redis.exists(entry_key(key))
    with CaptureQueriesContext(connection) as queries:
        assert client.get(PROFILE).status_code == 200
    assert not any(q["sql"].startswith("SELECT") for q in queries.captured_queries)  # the read stayed on Redis
