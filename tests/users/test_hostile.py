"""Cached users under hostile input and a tampered Redis: never a 500, never a value we did not sign.

Hostile ids go through the public API (get_cached_user, invalidate_user(s)) and hostile sessions through
CachedAuthenticationMiddleware with the test client, with Redis up and down: the documented error
(InvalidName, a ValueError) or an anonymous user, and nothing written. Tampered records are edited with
``raw_redis``: each one is a miss, counted as ``users:tampered``, and reloaded from the database.
"""

from __future__ import annotations

import decimal
import json
import uuid

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.test import AsyncClient, Client

from hotcache import keys, metering, signing, testing, users
from hotcache.backends import redis as redis_backend
from hotcache.exceptions import InvalidName
from hotcache.testing import count_redis
from hotcache.users import cache
from tests.support.targets import per_master, warm_every_master

User = get_user_model()
PROFILE = "/users/me/"
DJANGO_AUTH_MW = "django.contrib.auth.middleware.AuthenticationMiddleware"
OUR_MW = "hotcache.middleware.CachedAuthenticationMiddleware"


@pytest.fixture(autouse=True)
def cached_stack(settings, db):
    settings.MIDDLEWARE = [OUR_MW if m == DJANGO_AUTH_MW else m for m in settings.MIDDLEWARE]
    settings.ROOT_URLCONF = "config.demo.urls"


@pytest.fixture(params=["redis up", "redis down"])
def redis_state(request):
    if request.param == "redis down":
        request.getfixturevalue("redis_down")
    return request.param


def entry_key(pk):
    return keys.tagged("users", str(pk), "u")


def version_key(pk):
    return keys.tagged("users", str(pk), "v")


def users_store(raw_redis, key_prefix):
    """Every users key with its value: what 'the store is unchanged' compares."""
    found = {}
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{users:*", count=1000):
        kind = raw_redis.type(key)
        found[key] = raw_redis.get(key) if kind == b"string" else kind
    return found


def tampered():
    return metering.snapshot()["ev:users:tampered"]


def client_for(user):
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def set_session(client, **values):
    session = client.session
    for name, value in values.items():
        session[name] = value
    session.save()


# --- hostile ids through the public API ----------------------------------------------------------


def shown(value):
    """A test id for any value (repr() refuses ints of more than 4300 digits)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{value.bit_length()} bits>"
    return f"{type(value).__name__}:{text[:24]}"


HOSTILE_IDS = [
    None,
    True,
    False,
    1.0,
    1.5,
    float("nan"),
    float("inf"),
    decimal.Decimal("1"),
    complex(1, 0),
    b"1",
    bytearray(b"1"),
    [1],
    (1,),
    {"id": 1},
    {1},
    object(),
    "",
    " ",
    "abc",
    "1.0",
    "1e3",
    "0x10",
    "1\x00",
    "\x00",
    "1\n",
    "a\r\nSet-Cookie: x",
    "1\x7f",
    "1\x85",
    "\ud800",
    "1\udfff",
    "9" * 300,
    "x" * 100_000,
    10**30,
    2**63,
    -(2**63) - 1,
    10**5000,
    uuid.UUID(int=1),
    '{"$gt": ""}',
    "*",
    "{users:1}",
]


@pytest.mark.parametrize("user_id", HOSTILE_IDS, ids=shown)
def test_hostile_ids_are_invalid_names_and_touch_nothing(user_id, redis_state, raw_redis, key_prefix):
    before = users_store(raw_redis, key_prefix)
    with count_redis() as counted:
        with pytest.raises(InvalidName, match="user_id"):
            users.get_cached_user(user_id)
        with pytest.raises(ValueError, match="user_id"):  # InvalidName is a ValueError
            users.invalidate_user(user_id)
        with pytest.raises(InvalidName):
            users.invalidate_users([1, user_id])  # all or nothing: user 1 is not invalidated either
    assert counted.commands == 0 and counted.mongo_ops == 0
    assert not cache.pending_invalidations
    assert users_store(raw_redis, key_prefix) == before


def test_spellings_of_one_id_share_one_entry_so_one_invalidation_reaches_them(raw_redis):
    user = User.objects.create_user("alice", first_name="Old")
    pk = user.pk
    spellings = (pk, str(pk), f" {pk} ", str(pk).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")))
    for spelling in spellings:
        assert users.get_cached_user(spelling).first_name == "Old"
    assert raw_redis.exists(entry_key(pk))
    assert not any(raw_redis.exists(keys.tagged("users", s, "u")) for s in spellings[2:])
    User.objects.filter(pk=pk).update(first_name="New")  # no signal
    users.invalidate_user(str(pk))
    assert users.get_cached_user(pk).first_name == "New"


def test_an_id_that_is_not_found_is_none_and_not_cached(raw_redis, redis_state):
    assert users.get_cached_user(-5) is None
    assert users.get_cached_user("424242") is None
    assert not raw_redis.exists(entry_key(-5)) and not raw_redis.exists(entry_key(424242))


# --- hostile sessions through CachedAuthenticationMiddleware --------------------------------------

HOSTILE_SESSION_IDS = [
    [1],
    {"id": 1},
    None,
    True,
    1.5,
    "",
    "abc",
    "\ud800",
    "1\x00",
    "9" * 400,
    "x" * 200_000,
    10**30,
]


@pytest.mark.parametrize("session_id", HOSTILE_SESSION_IDS, ids=shown)
def test_a_session_whose_user_id_is_not_a_primary_key_is_anonymous(session_id, redis_state, raw_redis, key_prefix):
    user = User.objects.create_user("alice")
    client = client_for(user)
    set_session(client, _auth_user_id=session_id)
    before = users_store(raw_redis, key_prefix)
    response = client.get(PROFILE)
    assert response.status_code == 401
    assert users_store(raw_redis, key_prefix) == before


@pytest.mark.parametrize("session_id", [[1], "\ud800", "x" * 200_000], ids=shown)
def test_async_views_get_an_anonymous_user_for_a_hostile_session(session_id, redis_state):
    user = User.objects.create_user("alice")
    client = AsyncClient(raise_request_exception=False)
    async_to_sync(client.aforce_login)(user)
    session = async_to_sync(client.asession)()
    session["_auth_user_id"] = session_id
    async_to_sync(session.asave)()
    response = async_to_sync(client.get)("/users/me/async/")
    assert response.status_code == 200 and response.json()["authenticated"] is False


@pytest.mark.parametrize(
    "backend",
    [["django.contrib.auth.backends.ModelBackend"], None, 7, "\ud800", "x" * 100_000, "os.system", ""],
    ids=repr,
)
def test_a_session_with_an_odd_backend_is_anonymous(backend, redis_state):
    user = User.objects.create_user("alice")
    client = client_for(user)
    set_session(client, _auth_user_backend=backend)
    assert client.get(PROFILE).status_code == 401


@pytest.mark.parametrize(
    "session_hash",
    ["é" * 64, "\ud800" * 64, "ü", "0" * 64, "", None, 12345, ["a"], {"h": 1}, "x" * 100_000, "\x00" * 64],
    ids=shown,
)
def test_a_session_with_an_odd_hash_is_logged_out_as_django_does(session_hash, redis_state):
    user = User.objects.create_user("alice")
    client = client_for(user)
    assert client.get(PROFILE).status_code == 200  # cached (Redis up)
    set_session(client, _auth_user_hash=session_hash)
    response = client.get(PROFILE)
    assert response.status_code == 401
    assert "_auth_user_id" not in client.session  # flushed, as django.contrib.auth.get_user does


def test_a_session_without_a_hash_is_logged_out(redis_state):
    user = User.objects.create_user("alice")
    client = client_for(user)
    session = client.session
    del session["_auth_user_hash"]
    session.save()
    assert client.get(PROFILE).status_code == 401


@pytest.mark.parametrize("method", ["BREW", "PROPFIND", "TRACE", "OPTIONS", "DELETE", "PATCH", "HEAD", "M-SEARCH"])
def test_odd_http_methods_still_get_the_cached_user(method, redis_state):
    user = User.objects.create_user("alice")
    client = client_for(user)
    response = client.generic(method, PROFILE)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"x" * 2_000_000, "application/octet-stream"),
        ("[" * 50_000 + "]" * 50_000, "application/json"),
        ("[" * 100_000, "application/json"),
        (b"\xff\xfe\x00garbage", "application/x-www-form-urlencoded; charset=utf-8"),
        ("a=" + "\ud800".encode("utf-8", "surrogatepass").decode("latin-1"), "application/x-www-form-urlencoded"),
        (b"", "multipart/form-data; boundary=\x00"),
    ],
    ids=["huge", "deep-json", "unclosed-json", "not-utf8", "surrogate-form", "nul-boundary"],
)
def test_hostile_bodies_do_not_reach_the_user_cache(body, content_type, redis_state):
    user = User.objects.create_user("alice")
    client = client_for(user)
    response = client.generic("POST", PROFILE, body, content_type=content_type)
    assert response.status_code == 200 and response.json()["username"] == "alice"


def test_a_hostile_session_cookie_is_anonymous(redis_state):
    client = Client(raise_request_exception=False)
    for cookie in ("\x00", "x" * 5000, "../../etc/passwd", "' OR 1=1 --", "%ud800"):
        client.cookies["sessionid"] = cookie
        assert client.get(PROFILE).status_code == 401


# --- a tampered Redis ----------------------------------------------------------------------------


@pytest.fixture
def alice(raw_redis):
    user = User.objects.create_user("alice", first_name="Alice")
    client = client_for(user)
    assert client.get(PROFILE).status_code == 200
    assert raw_redis.exists(entry_key(user.pk))
    return user, client


def resealed(raw, user_id, change):
    """The entry ``raw`` with its JSON changed by ``change`` and signed again (as a bug or another version would)."""
    body = json.loads(signing.unseal("users.entry", str(user_id), raw))
    change(body)
    return signing.seal("users.entry", str(user_id), json.dumps(body, separators=(",", ":")))


def _swap_in_other_user(raw_redis, pk):
    other = User.objects.create_user("mallory", first_name="Mallory")
    users.get_cached_user(other.pk)
    raw_redis.set(entry_key(pk), raw_redis.get(entry_key(other.pk)))


ENTRY_TAMPERING = {
    "flipped field": lambda r, pk, raw: r.set(entry_key(pk), raw.replace(b'"is_staff":false', b'"is_staff":true')),
    "flipped name": lambda r, pk, raw: r.set(entry_key(pk), raw.replace(b'"Alice"', b'"Mallory"')),
    "swapped with another user's": lambda r, pk, raw: _swap_in_other_user(r, pk),
    "truncated": lambda r, pk, raw: r.set(entry_key(pk), raw[: len(raw) // 2]),
    "signature only": lambda r, pk, raw: r.set(entry_key(pk), raw.split(b".", 1)[0]),
    "non-ASCII signature (defect 3)": lambda r, pk, raw: r.set(entry_key(pk), "é".encode() * 32 + raw[64:]),
    "non-ASCII body": lambda r, pk, raw: r.set(entry_key(pk), raw.replace(b'"Alice"', '"Alïce"'.encode())),
    "not UTF-8": lambda r, pk, raw: r.set(entry_key(pk), b"\xff\xfe" + raw),
    "empty": lambda r, pk, raw: r.set(entry_key(pk), b""),
    "no signature": lambda r, pk, raw: r.set(entry_key(pk), raw.split(b".", 1)[1]),
    "a pickle": lambda r, pk, raw: r.set(entry_key(pk), b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00\x8c\x02os."),
    "a hash": lambda r, pk, raw: (r.delete(entry_key(pk)), r.hset(entry_key(pk), "d", raw)),
    "a list": lambda r, pk, raw: (r.delete(entry_key(pk)), r.rpush(entry_key(pk), raw)),
    "old format 1": lambda r, pk, raw: r.set(entry_key(pk), resealed(raw, pk, lambda b: b.update(f=1))),
    "other model": lambda r, pk, raw: r.set(entry_key(pk), resealed(raw, pk, lambda b: b.update(m="auth.group"))),
    "no auth hash": lambda r, pk, raw: r.set(entry_key(pk), resealed(raw, pk, lambda b: b.pop("h"))),
    "no expiry": lambda r, pk, raw: r.set(entry_key(pk), resealed(raw, pk, lambda b: b.pop("x"))),
    "fields not an object": lambda r, pk, raw: r.set(entry_key(pk), resealed(raw, pk, lambda b: b.update(d=[1]))),
    "field of the wrong type": lambda r, pk, raw: r.set(
        entry_key(pk), resealed(raw, pk, lambda b: b["d"].update(date_joined="yesterday"))
    ),
    "not JSON": lambda r, pk, raw: r.set(entry_key(pk), signing.seal("users.entry", str(pk), "{not json")),
    "deeply nested": lambda r, pk, raw: r.set(
        entry_key(pk), signing.seal("users.entry", str(pk), "[" * 100_000 + "]" * 100_000)
    ),
    "sealed for another purpose": lambda r, pk, raw: r.set(
        entry_key(pk), signing.seal("apikeys.record", str(pk), raw.split(b".", 1)[1].decode())
    ),
}


@pytest.mark.parametrize("tamper", list(ENTRY_TAMPERING), ids=list(ENTRY_TAMPERING))
def test_a_tampered_entry_is_a_counted_miss_reloaded_from_the_database(tamper, alice, raw_redis):
    user, client = alice
    ENTRY_TAMPERING[tamper](raw_redis, user.pk, raw_redis.get(entry_key(user.pk)))
    before = tampered()
    with count_redis() as counted:
        response = client.get(PROFILE)
    assert response.status_code == 200
    assert response.json() == {
        "authenticated": True,
        "id": user.pk,
        "username": "alice",
        "first_name": "Alice",
        "is_staff": False,
    }
    assert counted.events["users:miss"] == 1 and counted.events["users:hit"] == 0
    assert tampered() == before + 1
    # Refilled with a genuine entry: the next request is a hit again.
    assert signing.unseal("users.entry", str(user.pk), raw_redis.get(entry_key(user.pk))) is not None
    with count_redis() as again:
        assert client.get(PROFILE).status_code == 200
    assert again.events["users:hit"] == 1 and tampered() == before + 1


def test_a_tampered_entry_through_get_cached_user_is_reloaded(alice, raw_redis):
    user, _ = alice
    raw = raw_redis.get(entry_key(user.pk))
    raw_redis.set(entry_key(user.pk), raw.replace(b'"is_superuser":false', b'"is_superuser":true'))
    cached = users.get_cached_user(user.pk)
    assert cached.is_superuser is False and tampered() == 1


def test_an_old_entry_replayed_after_its_expiry_is_refused(alice, raw_redis, clock, hotcache_config):
    user, client = alice
    old = raw_redis.get(entry_key(user.pk))  # the attacker keeps a copy of the entry while alice is staff...
    User.objects.filter(pk=user.pk).update(first_name="Renamed")
    users.invalidate_user(user.pk)
    clock.advance(300 + 61)  # USER_CACHE_TTL and the allowed clock skew later...
    raw_redis.set(entry_key(user.pk), old)  # ...and writes it back, without a TTL
    assert client.get(PROFILE).json()["first_name"] == "Renamed"
    assert tampered() == 1


def test_an_entry_signed_under_a_fallback_key_is_still_a_hit(alice, settings):
    _, client = alice
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "rotated-secret-rotated-secret-rotated-secret-rotated-secret"
    with count_redis() as counted:
        assert client.get(PROFILE).status_code == 200
    assert counted.events["users:hit"] == 1 and tampered() == 0


VERSION_TAMPERING = {
    "not a number": lambda r, key: r.set(key, b"abc"),
    "not UTF-8": lambda r, key: r.set(key, b"\xff\xfe\x00"),
    "past int64": lambda r, key: r.set(key, b"9" * 30),
    "a hash": lambda r, key: (r.delete(key), r.hset(key, "v", 1)),
    "a list": lambda r, key: (r.delete(key), r.rpush(key, 1)),
}


@pytest.mark.parametrize("tamper", list(VERSION_TAMPERING), ids=list(VERSION_TAMPERING))
def test_a_tampered_version_counter_never_fails_a_request_or_an_invalidation(tamper, alice, raw_redis):
    user, client = alice
    bob = User.objects.create_user("bob")
    bob_client = client_for(bob)
    VERSION_TAMPERING[tamper](raw_redis, version_key(user.pk))
    raw_redis.delete(entry_key(user.pk))
    assert client.get(PROFILE).status_code == 200  # a miss: load, and a write-back the counter decides
    User.objects.filter(pk=user.pk).update(first_name="Renamed")
    assert users.invalidate_user(user.pk)  # reaches Redis; the counter is repaired
    assert not cache.pending_invalidations
    assert tampered() >= 1
    assert client.get(PROFILE).json()["first_name"] == "Renamed"  # the stale entry is gone
    with count_redis() as counted:
        assert client.get(PROFILE).json()["first_name"] == "Renamed"
        assert bob_client.get(PROFILE).status_code == 200
    assert counted.events["users:hit"] >= 1 and counted.events["users:fallback"] == 0
    assert raw_redis.type(version_key(user.pk)) == b"string" and int(raw_redis.get(version_key(user.pk))) > 0


def test_a_tampered_version_met_by_a_replayed_invalidation_is_repaired_too(alice, raw_redis, redis_proxy, clock):
    user, _ = alice
    users.get_cached_user(user.pk)
    redis_proxy.down()
    assert not users.invalidate_user(user.pk)  # kept for replay
    redis_proxy.up()
    clock.advance(10)
    raw_redis.set(version_key(user.pk), b"not-a-counter")
    other = User.objects.create_user("bob")
    assert users.get_cached_user(other.pk).username == "bob"  # the replay runs first, and does not fail the read
    assert not cache.pending_invalidations and tampered() == 1


def test_a_version_counter_can_only_decide_whether_a_genuine_user_is_written_back(alice, raw_redis):
    """Whatever the counter holds, what a process reads back is a signed entry or a miss."""
    user, client = alice
    for value in (b"", b"0", b"-1", b"x" * 1000, b"\x00"):
        raw_redis.delete(entry_key(user.pk))
        raw_redis.set(version_key(user.pk), value)
        assert client.get(PROFILE).json()["first_name"] == "Alice"
        stored = raw_redis.get(entry_key(user.pk))
        assert stored is None or signing.unseal("users.entry", str(user.pk), stored) is not None


# --- the outage path is bounded too --------------------------------------------------------------


def test_invalidations_kept_during_an_outage_are_bounded(redis_down, monkeypatch):
    monkeypatch.setattr(cache.pending_invalidations, "max_items", 5)
    for i in range(1, 9):
        assert not users.invalidate_user(i)
    assert list(cache.pending_invalidations) == ["4", "5", "6", "7", "8"]  # the oldest were dropped
    assert metering.snapshot()["ev:users:pending_dropped"] == 3


def test_invalidations_kept_during_an_outage_belong_to_this_process(redis_down):
    """Another process (a forked child, hotcache.testing.new_process()) owes none of them."""
    assert not users.invalidate_users([1, 2])
    assert sorted(cache.pending_invalidations) == ["1", "2"]
    testing.new_process()
    assert not cache.pending_invalidations


def test_invalidations_older_than_the_cache_ttl_are_not_replayed(redis_proxy, clock, hotcache_config, raw_redis):
    hotcache_config(USER_CACHE_TTL=60)
    redis_proxy.down()
    assert not users.invalidate_users([1, 2, 3])
    clock.advance(60 + 61)  # every entry they could remove has expired
    redis_proxy.up()
    before = raw_redis.get(version_key(1))
    users.get_cached_user(424242)
    assert not cache.pending_invalidations and raw_redis.get(version_key(1)) == before


def test_many_kept_invalidations_are_replayed_in_a_few_round_trips(redis_proxy, clock, raw_redis):
    redis_proxy.down()
    assert not users.invalidate_users(range(1, 1201))
    redis_proxy.up()
    clock.advance(10)
    warm_every_master(cache._INVALIDATE)  # connections made again (handshakes not counted), to every master
    redis_backend.lean_call("test", lambda r: r.execute_command("PING"))  # this thread's lean connection too
    with count_redis() as counted:
        users.get_cached_user(424242)
    assert not cache.pending_invalidations
    # The first script, 3 pipelines of 500 (each one round trip per master on a cluster), the read, a meter flush.
    assert counted.round_trips <= 1 + per_master(3) + 1 + per_master(1)
    assert raw_redis.exists(version_key(1200))


class OwnGetUserBackend(ModelBackend):
    """A backend with its own get_user(): hotcache leaves it to Django's get_user(), uncached."""

    def get_user(self, user_id):
        return super().get_user(user_id)


@pytest.mark.parametrize("session_hash", ["\ud800" * 64, "é" * 64, ["a"], None], ids=shown)
def test_a_backend_hotcache_does_not_serve_gets_the_same_protection(session_hash, settings, redis_state):
    path = f"{__name__}.OwnGetUserBackend"
    settings.AUTHENTICATION_BACKENDS = [path]
    user = User.objects.create_user("alice")
    client = Client(raise_request_exception=False)
    client.force_login(user, backend=path)
    assert client.get(PROFILE).status_code == 200
    set_session(client, _auth_user_hash=session_hash)
    assert client.get(PROFILE).status_code == 401
