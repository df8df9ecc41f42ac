"""Cached user loading: request.user from one Redis command, with Django's session checks on every hit.

The contract tests run over both loaders: the ORM (DjangoUserLoader) and a MongoDB ``users`` collection
(MongoUserLoader on the stand-in). "Source reads" are auth_user queries for the ORM and MongoDB
operations of the users feature for MongoDB.
"""

from __future__ import annotations

import contextlib
import threading

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext

from hotcache import keys, metering, users
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import redis_gate
from hotcache.testing import count_redis
from hotcache.users import cache

User = get_user_model()
PROFILE = "/users/me/"
DJANGO_AUTH_MW = "django.contrib.auth.middleware.AuthenticationMiddleware"
OUR_MW = "hotcache.middleware.CachedAuthenticationMiddleware"
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
MONGO_BACKEND = "hotcache.users.MongoUserBackend"


@pytest.fixture(autouse=True)
def cached_stack(settings):
    settings.MIDDLEWARE = [OUR_MW if m == DJANGO_AUTH_MW else m for m in settings.MIDDLEWARE]
    settings.ROOT_URLCONF = "config.demo.urls"


class Reads:
    n = 0


class DjangoStore:
    name = "django"
    backend = MODEL_BACKEND

    def create(self, username="alice", password="pw-1", **extra):
        return User.objects.create_user(username=username, password=password, **extra)

    def get(self, pk):
        return User.objects.get(pk=pk)

    @contextlib.contextmanager
    def reads(self):
        out = Reads()
        with CaptureQueriesContext(connection) as ctx:
            yield out
        out.n = sum(1 for q in ctx.captured_queries if '"auth_user"' in q["sql"])


class MongoStore:
    name = "mongo"
    backend = MONGO_BACKEND
    _next = 1000

    def create(self, username="alice", password="pw-1", **extra):
        MongoStore._next += 1
        user = User(id=MongoStore._next, username=username, **extra)
        user.set_password(password)
        users.MongoUserLoader().insert(user)
        return self.get(user.pk)

    def get(self, pk):
        return users.MongoUserLoader().load(pk)

    @contextlib.contextmanager
    def reads(self):
        out = Reads()
        before = metering.snapshot()["mongo:users"]
        yield out
        out.n = metering.snapshot()["mongo:users"] - before


@pytest.fixture(params=["django", "mongo", "mongo-real"])
def store(request, settings, hotcache_config, db):
    """The ORM; MongoUserLoader on the in-process stand-in; MongoUserLoader on a real MongoDB server."""
    if request.param == "django":
        return DjangoStore()
    if request.param == "mongo-real":
        request.getfixturevalue("real_mongo")
    settings.AUTHENTICATION_BACKENDS = [MONGO_BACKEND]
    hotcache_config(USER_LOADER="hotcache.users.MongoUserLoader")
    return MongoStore()


def login(store, user):
    client = Client()
    client.force_login(user, backend=store.backend)
    return client


def warm_redis():
    redis_backend.call("test", lambda r: r.ping())


def profile(client):
    return client.get(PROFILE)


def entry_key(pk):
    return keys.tagged("users", str(pk), "u")


def version_key(pk):
    return keys.tagged("users", str(pk), "v")


# --- the contract, over both loaders ---------------------------------------------------------------


def test_first_request_fills_and_warm_requests_cost_one_redis_command_and_no_user_read(store, raw_redis):
    user = store.create()
    client = login(store, user)
    warm_redis()
    with store.reads() as first, count_redis() as c1:
        assert profile(client).json()["username"] == "alice"
    assert first.n == 1 and c1.events["users:miss"] == 1
    assert raw_redis.exists(entry_key(user.pk))
    for _ in range(3):
        with store.reads() as warm, count_redis() as c:
            response = profile(client)
        assert response.status_code == 200 and response.json()["username"] == "alice"
        assert warm.n == 0
        assert c.by_feature["users"] == 1 and c.events["users:hit"] == 1


def test_saved_change_is_seen_on_the_next_request(store):
    user = store.create(first_name="Al")
    client = login(store, user)
    assert profile(client).json()["first_name"] == "Al"
    fresh = store.get(user.pk)
    fresh.first_name = "Alice"
    fresh.save()
    assert profile(client).json()["first_name"] == "Alice"


def test_password_change_logs_out_a_session_whose_hash_is_old_even_after_the_cache_refilled(store):
    user = store.create()
    old_session = login(store, user)
    assert profile(old_session).status_code == 200  # cache warm with the old hash
    changed = store.get(user.pk)
    changed.set_password("pw-2")
    changed.save()
    new_session = login(store, store.get(user.pk))
    assert profile(new_session).status_code == 200  # refills the cache with the new hash
    with count_redis() as c:
        assert profile(new_session).status_code == 200
    assert c.events["users:hit"] == 1
    response = profile(old_session)
    assert response.status_code == 401
    assert "_auth_user_id" not in old_session.session  # flushed, as django.contrib.auth.get_user does


def test_deactivated_user_is_rejected_on_the_next_request(store):
    user = store.create()
    client = login(store, user)
    assert profile(client).status_code == 200
    fresh = store.get(user.pk)
    fresh.is_active = False
    fresh.save()
    assert profile(client).status_code == 401


def test_inactive_user_in_a_warm_cache_is_still_rejected(store, raw_redis):
    user = store.create()
    client = login(store, user)
    users.get_cached_user(user.pk)  # cache it
    fresh = store.get(user.pk)
    fresh.is_active = False
    fresh.save()
    assert users.get_cached_user(user.pk).is_active is False  # refilled: inactive users are real users
    assert raw_redis.exists(entry_key(user.pk))
    with store.reads() as reads:
        assert profile(client).status_code == 401
    assert reads.n == 0


def test_deleted_user_is_anonymous_on_the_next_request(store):
    user = store.create()
    client = login(store, user)
    assert profile(client).status_code == 200
    store.get(user.pk).delete()
    assert profile(client).status_code == 401


def test_not_found_is_never_cached(store, raw_redis):
    assert users.get_cached_user(424242) is None
    assert not raw_redis.exists(entry_key(424242))


def test_redis_holds_no_password_hash(store, raw_redis, key_prefix):
    user = store.create(password="s3cret-pw")
    client = login(store, user)
    profile(client)
    password_hash = store.get(user.pk).password if store.name == "mongo" else User.objects.get(pk=user.pk).password
    values = [raw_redis.get(k) for k in raw_redis.scan_iter(match=f"{key_prefix}:*users*")]
    assert any(values)
    for value in values:
        if value:
            assert password_hash.encode() not in value
            assert b"md5$" not in value and b"password" not in value


def test_get_cached_user_rebuilds_from_redis_without_a_read(store):
    user = store.create(first_name="Bo")
    assert users.get_cached_user(user.pk).first_name == "Bo"
    with store.reads() as reads:
        cached = users.get_cached_user(user.pk)
    assert reads.n == 0 and cached.pk == user.pk and cached.first_name == "Bo"
    assert cached.date_joined == store.get(user.pk).date_joined  # full precision survives JSON


def test_a_password_changed_on_a_cached_user_is_saved_and_checked(store):
    user = store.create(password="pw-1")
    users.get_cached_user(user.pk)
    cached = users.get_cached_user(user.pk)
    cached.set_password("pw-2")
    cached.save()
    assert store.get(user.pk).check_password("pw-2")


def test_login_with_a_password_takes_the_right_one_and_refuses_a_wrong_one_or_an_unknown_username(store):
    store.create(username="alice", password="pw-1")
    assert authenticate(username="alice", password="pw-1").username == "alice"
    assert authenticate(username="alice", password="pw-2") is None
    assert authenticate(username="nobody", password="pw-1") is None


def test_redis_outage_mid_test_keeps_requests_working_and_refills_after_recovery(
    store, redis_proxy, clock, raw_redis, settings
):
    user = store.create()
    client = login(store, user)
    assert profile(client).status_code == 200
    raw_redis.delete(entry_key(user.pk))
    redis_proxy.down()
    for i in range(3):
        with store.reads() as reads, count_redis() as c:
            response = profile(client)
        assert response.status_code == 200 and response.json()["username"] == "alice"
        assert reads.n == 1 and c.events["users:fallback"] == 1
        assert c.events["users:redis_error"] == (1 if i == 0 else 0)  # one failed attempt opens the gate; then none
        assert c.events["users:gate_rejected"] == (0 if i == 0 else 1)
    redis_proxy.up()
    clock.advance(settings.HOTCACHE.get("HEALTH_COOLDOWN", 5.0) + 1)
    assert profile(client).status_code == 200
    assert raw_redis.exists(entry_key(user.pk))
    with store.reads() as reads, count_redis() as c:
        assert profile(client).status_code == 200
    assert reads.n == 0 and c.events["users:hit"] == 1


def test_invalidation_that_missed_an_outage_is_replayed_before_the_next_read(store, redis_proxy, clock, settings):
    user = store.create(first_name="Old")
    client = login(store, user)
    assert profile(client).json()["first_name"] == "Old"  # cached
    redis_proxy.down()
    fresh = store.get(user.pk)
    fresh.first_name = "New"
    fresh.save()  # the invalidation cannot reach Redis now
    assert profile(client).json()["first_name"] == "New"  # fallback reads the source
    redis_proxy.up()
    clock.advance(settings.HOTCACHE.get("HEALTH_COOLDOWN", 5.0) + 1)
    assert profile(client).json()["first_name"] == "New"  # the stale entry was dropped, not served


# --- ORM-specific ----------------------------------------------------------------------------------


@pytest.fixture
def dj(db):
    return DjangoStore()


def test_anonymous_requests_never_touch_redis(db):
    warm_redis()
    with count_redis() as c:
        assert Client().get(PROFILE).status_code == 401
    assert c.by_feature["users"] == 0


def test_saving_a_cached_user_never_blanks_the_password(dj):
    user = dj.create(password="pw-1")
    users.get_cached_user(user.pk)
    cached = users.get_cached_user(user.pk)
    assert "password" in cached.get_deferred_fields()
    cached.first_name = "Changed"
    cached.save()
    stored = User.objects.get(pk=user.pk)
    assert stored.first_name == "Changed" and stored.check_password("pw-1")


def test_login_updating_last_login_does_not_evict_the_cached_user(dj, raw_redis):
    user = dj.create()
    client = login(dj, user)
    profile(client)
    version = raw_redis.get(version_key(user.pk))
    login(dj, User.objects.get(pk=user.pk))  # user_logged_in -> save(update_fields=["last_login"])
    assert raw_redis.exists(entry_key(user.pk))
    assert raw_redis.get(version_key(user.pk)) == version
    cached = users.get_cached_user(user.pk)
    assert cached.last_login == User.objects.get(pk=user.pk).last_login  # deferred: read fresh on access


@pytest.mark.parametrize(
    "change",
    [
        lambda u, g, p: u.groups.add(g),
        lambda u, g, p: g.user_set.add(u),
        lambda u, g, p: g.user_set.clear(),
        lambda u, g, p: u.user_permissions.add(p),
        lambda u, g, p: u.user_permissions.clear(),
    ],
    ids=["user.groups.add", "group.user_set.add", "group.user_set.clear", "permissions.add", "permissions.clear"],
)
def test_group_and_permission_changes_invalidate(dj, raw_redis, change, request):
    user = dj.create()
    group = Group.objects.create(name="staff")
    Group.objects.create(name="members").user_set.add(user)
    user.user_permissions.add(Permission.objects.last())
    if "clear" in request.node.callspec.id and "user_set" in request.node.callspec.id:
        group.user_set.add(user)
    perm = Permission.objects.first()
    users.get_cached_user(user.pk)
    assert raw_redis.exists(entry_key(user.pk))
    version = int(raw_redis.get(version_key(user.pk)) or 0)
    change(user, group, perm)
    assert not raw_redis.exists(entry_key(user.pk))
    assert int(raw_redis.get(version_key(user.pk))) > version


def test_allow_all_users_backend_keeps_an_inactive_user_logged_in(dj, settings):
    backend = "django.contrib.auth.backends.AllowAllUsersModelBackend"
    settings.AUTHENTICATION_BACKENDS = [backend]
    user = dj.create(is_active=False)
    client = Client()
    client.force_login(user, backend=backend)
    assert profile(client).status_code == 200
    with dj.reads() as reads:
        assert profile(client).status_code == 200
    assert reads.n == 0


def test_session_backend_not_in_authentication_backends_is_anonymous(dj, settings):
    user = dj.create()
    client = login(dj, user)
    profile(client)
    settings.AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.AllowAllUsersModelBackend"]
    assert profile(client).status_code == 401


def test_secret_key_fallback_session_is_kept_and_its_hash_rotated(dj, settings):
    user = dj.create()
    client = login(dj, user)
    profile(client)  # cached under the old key
    old_key = settings.SECRET_KEY
    settings.SECRET_KEY = "a-new-secret-key-for-rotation-0123456789abcdefghijklmnop"
    settings.SECRET_KEY_FALLBACKS = [old_key]
    # The entry was signed under what is now a fallback key: still a hit (hotcache.signing honours
    # SECRET_KEY_FALLBACKS), and its session hash, made under the same key, still matches.
    with dj.reads() as reads, count_redis() as c:
        assert profile(client).status_code == 200
    assert reads.n == 0 and c.events["users:hit"] == 1 and c.events["users:tampered"] == 0
    users.invalidate_user(user.pk)  # refilled under the new key (as after USER_CACHE_TTL at the latest)
    assert profile(client).status_code == 200  # reload -> the session's hash matches a fallback -> rotated
    assert client.session["_auth_user_hash"] == User.objects.get(pk=user.pk).get_session_auth_hash()
    with dj.reads() as reads:
        assert profile(client).status_code == 200
    assert reads.n == 0
    settings.SECRET_KEY_FALLBACKS = []
    other = login(dj, user)
    settings.SECRET_KEY = old_key  # a session signed under a key no longer configured is logged out
    assert profile(other).status_code == 401


def test_tampered_entry_is_not_trusted(dj, raw_redis):
    user = dj.create()
    client = login(dj, user)
    profile(client)
    raw = raw_redis.get(entry_key(user.pk))
    raw_redis.set(entry_key(user.pk), raw.replace(b'"is_staff":false', b'"is_staff":true'))
    with dj.reads() as reads:
        assert profile(client).json()["is_staff"] is False
    assert reads.n == 1


def test_invalidation_during_a_concurrent_load_never_leaves_a_stale_user_cached(dj, raw_redis, monkeypatch):
    user = dj.create(first_name="Stale")
    stale = User.objects.get(pk=user.pk)
    loaded, proceed = threading.Event(), threading.Event()

    def gated_load(self, user_id):
        loaded.set()  # the reader has read the version and "queried" the old row
        assert proceed.wait(10)
        return stale

    monkeypatch.setattr(users.DjangoUserLoader, "load", gated_load)
    result = {}
    reader = threading.Thread(target=lambda: result.setdefault("user", users.get_cached_user(user.pk)))
    reader.start()
    assert loaded.wait(10)
    monkeypatch.undo()
    fresh = User.objects.get(pk=user.pk)
    fresh.first_name = "Fresh"
    fresh.save()  # invalidation between the reader's load and its write-back
    proceed.set()
    reader.join(10)
    assert result["user"].first_name == "Stale"  # the reader returns what it loaded...
    assert not raw_redis.exists(entry_key(user.pk))  # ...but its write-back was dropped
    assert users.get_cached_user(user.pk).first_name == "Fresh"
    assert users.get_cached_user(user.pk).first_name == "Fresh"


def test_fill_with_an_outdated_version_is_dropped(dj, raw_redis):
    user = dj.create()
    seen = raw_redis.get(version_key(user.pk))
    assert cache.fill(str(user.pk), seen, user, users.DjangoUserLoader())
    users.invalidate_user(user.pk)
    assert not cache.fill(str(user.pk), seen, user, users.DjangoUserLoader())
    assert not raw_redis.exists(entry_key(user.pk))


def test_entries_expire_after_user_cache_ttl(dj, raw_redis, hotcache_config):
    hotcache_config(USER_CACHE_TTL=42)
    user = dj.create()
    users.get_cached_user(user.pk)
    assert 0 < raw_redis.ttl(entry_key(user.pk)) <= 42
    assert raw_redis.ttl(version_key(user.pk)) in (-2,) or raw_redis.ttl(version_key(user.pk)) > 0


def test_redis_down_from_the_start_costs_one_attempt_then_none(dj, redis_down):
    user = dj.create()
    client = login(dj, user)
    redis_gate.reset()  # creating the user already tried (and failed) to invalidate
    with count_redis() as c:
        for _ in range(3):
            assert profile(client).status_code == 200
    assert c.events["users:fallback"] == 3
    assert c.events["users:redis_error"] == 1 and c.events["users:gate_rejected"] == 2


def test_async_views_get_the_cached_user_through_auser(dj):
    user = dj.create()
    client = AsyncClient()
    async_to_sync(client.aforce_login)(user)
    warm_redis()
    assert async_to_sync(client.get)("/users/me/async/").json() == {"authenticated": True, "username": "alice"}
    with dj.reads() as reads, count_redis() as c:
        response = async_to_sync(client.get)("/users/me/async/")
    assert response.json()["authenticated"] is True
    assert reads.n == 0 and c.by_feature["users"] == 1


def test_middleware_without_sessions_is_a_configuration_error(rf):
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="SessionMiddleware"):
        users.CachedAuthenticationMiddleware(lambda r: None).process_request(rf.get("/"))


# --- checks ----------------------------------------------------------------------------------------


def _check_ids():
    from hotcache.checks import check_users

    return sorted(m.id for m in check_users())


def test_checks_pass_with_defaults():
    assert _check_ids() == []


def test_unimportable_loader_is_e020(hotcache_config):
    hotcache_config(USER_LOADER="nowhere.Loader")
    assert _check_ids() == ["hotcache.E020"]


def test_loader_that_is_not_a_user_loader_is_e021(hotcache_config):
    hotcache_config(USER_LOADER="hotcache.users.MongoUserBackend")
    assert _check_ids() == ["hotcache.E021"]


def test_ttl_that_is_not_a_number_is_e004(hotcache_config):
    hotcache_config(USER_CACHE_TTL="5m")
    assert _check_ids() == ["hotcache.E004"]


def test_both_auth_middlewares_is_w020(settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, DJANGO_AUTH_MW]
    assert _check_ids() == ["hotcache.W020"]


def test_replacing_djangos_middleware_satisfies_the_admin_check(settings):
    """admin.E408 asks for AuthenticationMiddleware (or a subclass): the drop-in must pass it."""
    from django.contrib.admin.checks import check_dependencies

    settings.MIDDLEWARE = [
        "hotcache.middleware.CachedAuthenticationMiddleware" if m.endswith(".AuthenticationMiddleware") else m
        for m in settings.MIDDLEWARE
    ]
    assert "hotcache.middleware.CachedAuthenticationMiddleware" in settings.MIDDLEWARE
    assert "admin.E408" not in [m.id for m in check_dependencies()]
