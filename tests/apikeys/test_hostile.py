"""API keys under hostile input and a tampered Redis: never a 500, never a value an attacker chose.

Hostile input goes through the public API and through HTTP (require_api_key, and the DRF adapter) with Redis
up and with Redis down, and must give the documented error (InvalidKey / ValueError / KeyNotFound, 401) with
both stores unchanged. Tampering edits every kind of record hotcache keeps in Redis (cached record, tombstone,
'unknown' marker, day counter, base, writer records, touched index) with a plain client, then uses the feature:
answers come from what MongoDB holds, each untrusted record is counted as ev:apikeys:tampered, and the usage
count stays equal to the allowed calls.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.test import Client
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

from hotcache import apikeys, metering, recovery
from hotcache import clock as hotcache_clock
from hotcache.apikeys import _records, _recovery
from hotcache.apikeys_drf import ApiKeyAuthentication, HasApiKey
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.exceptions import InvalidName, MongoUnavailable
from hotcache.testing import count_redis, mongo_down

GOOD_SHAPE = "abcdefgh." + "a" * 43  # well formed, unknown


@pytest.fixture(autouse=True)
def _demo_urls(settings):
    settings.ROOT_URLCONF = "config.demo.urls"


@pytest.fixture(params=["redis", "redis_down"])
def store(request):
    """Runs a test on the real Redis and again with Redis refusing connections (MongoDB fallback)."""
    if request.param == "redis_down":
        request.getfixturevalue("redis_down")
    return request.param


@pytest.fixture
def http():
    return Client(raise_request_exception=False)


def _tampered() -> int:
    return metering.snapshot()["ev:apikeys:tampered"]


def _mongo_state():
    return sorted(
        repr(sorted(doc.items()))
        for name in (apikeys.KEYS_COLLECTION, apikeys.USAGE_COLLECTION)
        for doc in mongo.collection(name, feature="test").find({})
    )


def _redis_state(raw_redis, key_prefix):
    """Every API key record of this run in Redis, with its value (whatever its type)."""
    out = {}
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{apikeys:*"):
        kind, value = raw_redis.type(key), raw_redis.dump(key)
        if kind == b"none" or value is None:
            continue  # expired between SCAN and DUMP: absent, as the expiry rule in unchanged() expects
        out[key] = (kind, value)
    return out


@pytest.fixture
def unchanged(raw_redis, key_prefix):
    """``with unchanged():`` asserts that neither store changed inside the block."""

    class _Unchanged:
        def __enter__(self):
            self.started = time.monotonic()
            self.before = (_mongo_state(), _redis_state(raw_redis, key_prefix))
            self.ttls = {key: raw_redis.pttl(key) for key in self.before[1]}

        def __exit__(self, *exc):
            if exc[0] is None:
                mongo_after, redis_after = _mongo_state(), _redis_state(raw_redis, key_prefix)
                assert mongo_after == self.before[0]
                # The run's key prefix is shared by every test: a record an earlier test left may expire
                # inside this block. Such a key may vanish (only if its TTL ran out); nothing may change.
                # A PTTL of -2 on entry: it expired while the state above was read (a slow run), before
                # anything ran in the block.
                elapsed_ms = (time.monotonic() - self.started) * 1000
                expired = {
                    key for key in set(self.before[1]) - set(redis_after)
                    if self.ttls[key] == -2 or 0 <= self.ttls[key] <= elapsed_ms + 50  # -2: gone already
                }
                assert redis_after == {k: v for k, v in self.before[1].items() if k not in expired}

    return _Unchanged


def _tag(raw_key):
    return _records.tag_of(_records.digest_of(raw_key))


def _meta_key(raw_key):
    return _records.meta_key(_tag(raw_key))


def _today():
    return hotcache_clock.utcnow().date()


def _count_key(raw_key):
    return _records.count_key(_tag(raw_key), _today())


def _usage_today(key_id):
    return apikeys.usage(key_id, days=1)[0][1]


# --- hostile raw keys: the public API --------------------------------------------------------------

HOSTILE_RAW_KEYS = [
    "",
    None,
    12345,
    1.5,
    b"abcdefgh." + b"a" * 43,  # bytes of a well-formed key
    bytearray(b"abcdefgh." + b"a" * 43),
    ["abcdefgh." + "a" * 43],
    {"key": "abcdefgh." + "a" * 43},
    "abcdefgh.\ud800" + "a" * 42,  # lone surrogate
    "abcdefgh." + "a" * 42 + "\udfff",
    "abcdefgh." + "a" * 42 + "\x00",  # NUL
    "abcd\x00efgh." + "a" * 43,
    "abcdefgh." + "a" * 43 + "\n",  # trailing newline
    "abcdefgh." + "a" * 43 + "\r\nX-Evil: 1",  # header injection
    "a" * 201,  # over the header bound
    "x" * 100_000,
    "abcdefgh." + "a" * 10_000,
    "abcdefgh.é" + "a" * 42,  # non-ASCII
    "абвгдежз." + "a" * 43,  # Cyrillic prefix
    "\uff41\uff42\uff43\uff44\uff45\uff46\uff47\uff48." + "a" * 43,  # fullwidth letters
    "abcdefg\u0661." + "a" * 43,  # an Arabic-Indic digit
    "abcdefgh.\u200b" + "a" * 42,  # zero-width space
    "a.b.c.d.e.f.g.h",  # many dots
    "abcdefgh.." + "a" * 42,
    "abcdefgh." + "a." * 21 + "a",
    "." * 52,
    "abcdefgh",  # no dot
    "ABCDEFGH." + "a" * 43,  # upper-case prefix
    "abcdefgh." + "a" * 42,  # secret one short
    "abcdefgh." + "a" * 44,  # one long
    "abcdefgh." + "a" * 42 + "+",  # not url-safe base64
    "abcdefgh." + "a" * 42 + "=",
    "Api-Key abcdefgh." + "a" * 43,  # the header form passed as the key
    " abcdefgh." + "a" * 43,
    "abcdefgh.\t" + "a" * 42,
    "*",
    "abcdefgh.*" + "a" * 42,  # a glob character
    "{apikeys:x}." + "a" * 43,  # a hash tag
]


@pytest.mark.parametrize("raw", HOSTILE_RAW_KEYS, ids=range(len(HOSTILE_RAW_KEYS)))
def test_hostile_raw_key_is_invalid_and_touches_no_store(store, unchanged, raw):
    apikeys.create("alice", daily_limit=5)
    with unchanged(), count_redis() as c, pytest.raises(apikeys.InvalidKey) as info:
        apikeys.check(raw)
    assert str(info.value) == "invalid API key"
    assert (c.commands, c.mongo_ops) == (0, 0)


def test_well_formed_unknown_key_is_invalid_and_writes_no_mongodb_document(store):
    before = _mongo_state()
    for i in range(20):
        with pytest.raises(apikeys.InvalidKey):
            apikeys.check(f"zzzzzzz{i % 10}." + "Q" * 43)
    assert _mongo_state() == before


def test_invalid_key_log_never_carries_the_hostile_text(store, caplog):
    caplog.set_level("INFO", logger="hotcache.apikeys")
    for raw in ("abcdefgh.\ud800" + "a" * 42, "evil\r\nlog line", "x" * 5000):
        with pytest.raises(apikeys.InvalidKey):
            apikeys.check(raw)
    assert "evil" not in caplog.text and "\ud800" not in caplog.text and "x" * 100 not in caplog.text


# --- hostile create / ids / windows -----------------------------------------------------------------

HOSTILE_CREATE = [
    {"owner": None},
    {"owner": b"alice"},
    {"owner": ["alice"]},
    {"owner": {"$ne": None}},  # a MongoDB operator
    {"owner": True},
    {"owner": 1.5},
    {"owner": object()},
    {"owner": ""},
    {"owner": "al\ud800ice"},
    {"owner": "al\x00ice"},
    {"owner": "al\nice"},
    {"owner": "al\x85ice"},  # a C1 control
    {"owner": "a" * 257},
    {"owner": 10**300},  # 301 digits: too long as text
    {"name": None},
    {"name": b"ci"},
    {"name": 5},
    {"name": {"$gt": ""}},
    {"name": "c\x00i"},
    {"name": "c\ud800i"},
    {"name": "x" * 201},
    {"daily_limit": "10"},
    {"daily_limit": 1.5},
    {"daily_limit": True},
    {"daily_limit": 0},
    {"daily_limit": -1},
    {"daily_limit": 10**12 + 1},
    {"daily_limit": 10**30},  # beyond BSON's int64
    {"daily_limit": float("nan")},
    {"daily_limit": float("inf")},
    {"daily_limit": [10]},
    {"daily_limit": {"$gt": 0}},
    {"expires_at": "2030-01-01T00:00:00Z"},
    {"expires_at": dt.datetime(2030, 1, 1)},  # naive
    {"expires_at": dt.date(2030, 1, 1)},
    {"expires_at": 1893456000},
]


@pytest.mark.parametrize("kwargs", HOSTILE_CREATE, ids=range(len(HOSTILE_CREATE)))
def test_create_refuses_hostile_fields_with_a_value_error_and_stores_nothing(store, unchanged, kwargs):
    args = {"owner": "alice", **kwargs}
    with unchanged(), pytest.raises(ValueError) as info:
        apikeys.create(args.pop("owner"), **args)
    if "owner" in kwargs or "name" in kwargs:
        assert isinstance(info.value, InvalidName)
        assert ("owner" if "owner" in kwargs else "name") in str(info.value)


def test_create_keeps_ordinary_unicode_and_int_owners_through_the_signed_record(store):
    new = apikeys.create("café 日本 😀", name="ünïcode", daily_limit=10**12)
    usage = apikeys.check(new.raw_key)
    usage = apikeys.check(new.raw_key)  # warm on Redis: the owner comes from the verified cached record
    assert usage.owner == "café 日本 😀" and usage.limit == 10**12 and usage.allowed
    assert apikeys.create(42).key_id and apikeys.list_keys(42)[0].owner == "42"
    assert _tampered() == 0


HOSTILE_IDS = [
    None, 123, 1.5, b"ak_0", ["ak_0"], {"$ne": None}, "", "ak_\ud800", "ak\x00", "x" * 1000, "a:b", "*", "\n",
]


@pytest.mark.parametrize("key_id", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
def test_hostile_key_ids_are_not_found_and_change_nothing(store, unchanged, key_id):
    apikeys.create("alice")
    with unchanged():
        assert apikeys.get(key_id) is None
        with pytest.raises(apikeys.KeyNotFound):
            apikeys.revoke(key_id)
        with pytest.raises(apikeys.KeyNotFound):
            apikeys.usage(key_id)
        assert apikeys.usage_many([key_id], days=1) == {}


@pytest.mark.parametrize("owner", [{"$ne": None}, "\ud800", "a\x00", "x" * 300, b"alice", True])
def test_list_keys_refuses_a_hostile_owner_filter(store, owner):
    apikeys.create("alice")
    with pytest.raises(ValueError):
        apikeys.list_keys(owner)


@pytest.mark.parametrize("days", [0, -1, True, 1.5, "30", None, 3661, 10**9])
def test_day_windows_are_bounded(store, days):
    new = apikeys.create("alice")
    for fn in (lambda: apikeys.usage(new.key_id, days=days), lambda: apikeys.usage_many([new.key_id], days=days),
               lambda: apikeys.sync_usage(days=days)):
        with pytest.raises(ValueError):
            fn()


def test_command_turns_hostile_arguments_into_command_errors(store):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    for args in (["create", "al\x00ice"], ["create", "x" * 300], ["create", "a", "--name", "\ud800"],
                 ["create", "a", "--daily-limit", "0"], ["usage", "ak_\ud800"], ["usage", "ak_x", "--days", "0"],
                 ["revoke", "\x00"], ["list", "--owner", "\x00"]):
        with pytest.raises(CommandError):
            call_command("apikeys", *args)


# --- hostile HTTP ----------------------------------------------------------------------------------

HOSTILE_HEADERS = [
    {"HTTP_X_API_KEY": "abcdefgh.\ud800" + "a" * 42},
    {"HTTP_X_API_KEY": "abcdefgh." + "a" * 42 + "\x00"},
    {"HTTP_X_API_KEY": "\xff\xfe\xfd" * 17},  # latin-1 decoded odd bytes
    {"HTTP_X_API_KEY": "abcdefgh." + "a" * 43 + "\r\n"},
    {"HTTP_X_API_KEY": "\t"},
    {"HTTP_X_API_KEY": "k" * 65_536},
    {"HTTP_X_API_KEY": "a.b.c.d.e.f"},
    {"HTTP_X_API_KEY": "абвгдежз." + "a" * 43},
    {"HTTP_X_API_KEY": "null"},
    {"HTTP_X_API_KEY": '{"key": "abcdefgh.' + "a" * 43 + '"}'},
    {"HTTP_AUTHORIZATION": "Api-Key abcdefgh.\ud800" + "a" * 42},
    {"HTTP_AUTHORIZATION": "Api-Key \x00"},
    {"HTTP_AUTHORIZATION": "api-key " + "\xff" * 51},
    {"HTTP_AUTHORIZATION": "API-KEY  " + GOOD_SHAPE},
    {"HTTP_AUTHORIZATION": "Api-Key " + GOOD_SHAPE + " " + GOOD_SHAPE},
    {"HTTP_AUTHORIZATION": "Api-Key\t" + GOOD_SHAPE},
    {"HTTP_AUTHORIZATION": "Basic YWxpY2U6c2VjcmV0"},
    {"HTTP_AUTHORIZATION": "Api-Key " + "é" * 100_000},
    {"HTTP_AUTHORIZATION": "Api-Key " + GOOD_SHAPE},  # well formed, unknown
]


@pytest.mark.parametrize("headers", HOSTILE_HEADERS, ids=range(len(HOSTILE_HEADERS)))
def test_hostile_headers_get_401_json_never_500(store, http, unchanged, headers):
    apikeys.create("alice", daily_limit=5)
    check_unchanged = GOOD_SHAPE not in next(iter(headers.values())) or store == "redis_down"
    with unchanged() if check_unchanged else _noop():
        response = http.get("/api/usage/", **headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Api-Key"
    assert response.json()["error"] in ("api_key_required", "invalid_api_key")


class _noop:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("headers", HOSTILE_HEADERS[:12], ids=range(12))
def test_hostile_headers_on_the_async_view_and_drf_are_401(store, http, headers):
    assert http.get("/api/usage-async/", **headers).status_code == 401
    response = _Things.as_view()(APIRequestFactory().get("/things/", **headers))
    assert response.status_code == 401


class _Things(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasApiKey]
    renderer_classes = [JSONRenderer]

    def get(self, request):
        return Response({"owner": request.auth.owner})


@pytest.mark.parametrize("method", ["PROPFIND", "TRACE", "OPTIONS", "DELETE", "PATCH", "PUT", "HEAD", "X-EVIL"])
def test_odd_methods_are_authenticated_like_any_other(store, http, method):
    new = apikeys.create("alice", daily_limit=5)
    assert http.generic(method, "/api/usage/").status_code == 401
    assert http.generic(method, "/api/usage/", HTTP_X_API_KEY="abcdefgh.\ud800" + "a" * 42).status_code == 401
    assert http.generic(method, "/api/usage/", HTTP_X_API_KEY=new.raw_key).status_code == 200
    assert apikeys.check(new.raw_key).used_today == 2  # the one request was counted once


def test_huge_and_deeply_nested_bodies_are_never_read_for_a_key_decision(store, http):
    new = apikeys.create("alice", daily_limit=5)
    huge = b"x" * (3 * 1024 * 1024)
    nested = "[" * 100_000 + "]" * 100_000
    assert http.post("/api/usage/", data=huge, content_type="application/octet-stream").status_code == 401
    assert http.post("/api/usage/", data=nested, content_type="application/json").status_code == 401
    response = http.post("/api/usage/", data=nested, content_type="application/json", HTTP_X_API_KEY=new.raw_key)
    assert response.status_code == 200 and response.json()["used_today"] == 1
    auth = f"Api-Key {new.raw_key}"
    response = http.post("/api/usage/", data=huge, content_type="text/plain", HTTP_AUTHORIZATION=auth)
    assert response.status_code == 200 and response.json()["used_today"] == 2


def test_a_bad_authorization_header_wins_over_a_good_x_api_key(store, http):
    """Authorization is read first (documented): a forged one cannot be bypassed into another key's use."""
    new = apikeys.create("alice")
    response = http.get("/api/usage/", HTTP_AUTHORIZATION="Api-Key \x00", HTTP_X_API_KEY=new.raw_key)
    assert response.status_code == 401
    assert apikeys.check(new.raw_key).used_today == 1


# --- tampered cached records ------------------------------------------------------------------------


def _edit(fn):
    """A mutation of the sealed record that keeps its signature and rewrites its JSON body."""

    def mutate(raw_redis, key, raw):
        sig, _, body = raw.partition(b".")
        value = json.loads(body)
        fn(value)
        raw_redis.set(key, sig + b"." + json.dumps(value, ensure_ascii=False).encode())

    return mutate


def _set(value):
    return lambda raw_redis, key, raw: raw_redis.set(key, value(raw) if callable(value) else value)


def _retype(kind):
    def mutate(raw_redis, key, raw):
        raw_redis.delete(key)
        {"hash": lambda: raw_redis.hset(key, "owner", "mallory"), "list": lambda: raw_redis.rpush(key, raw),
         "set": lambda: raw_redis.sadd(key, raw), "zset": lambda: raw_redis.zadd(key, {raw: 1})}[kind]()

    return mutate


RECORD_TAMPERING = {
    "owner flipped": _edit(lambda m: m.update(owner="mallory")),
    "limit lifted": _edit(lambda m: m.update(limit=10**9)),
    "limit removed": _edit(lambda m: m.pop("limit")),
    "limit lowered": _edit(lambda m: m.update(limit=0)),
    "limit as text": _edit(lambda m: m.update(limit="1000")),
    "expiry in the past": _edit(lambda m: m.update(exp=1.0)),
    "validity stretched": _edit(lambda m: m.update(u=2**40)),
    "id of another key": _edit(lambda m: m.update(id="ak_0000000000000000")),
    "hash non-ASCII": _edit(lambda m: m.update(h="é" * 64)),
    "hash a number": _edit(lambda m: m.update(h=12345)),
    "owner missing": _edit(lambda m: m.pop("owner")),
    "owner a list": _edit(lambda m: m.update(owner=["mallory"])),
    "truncated": _set(lambda raw: raw[:-10]),
    "signature only": _set(lambda raw: raw[:64]),
    "signature stripped": _set(lambda raw: raw[65:]),
    "signature non-ASCII": _set(lambda raw: "é".encode() * 32 + raw[64:]),
    "not UTF-8": _set(lambda raw: b"\xff\xfe" + raw[2:]),
    "empty": _set(b""),
    "body null": _set(lambda raw: raw[:65] + b"null"),
    "body a list": _set(lambda raw: raw[:65] + b"[1,2]"),
    "body a string": _set(lambda raw: raw[:65] + b'"x"'),
    "body deeply nested": _set(lambda raw: raw[:65] + b"[" * 3000 + b"]" * 3000),
    "huge": _set(lambda raw: raw + b" " * 1_000_000),
    "legacy unsigned JSON": _set(lambda raw: raw[65:]),
    "forged tombstone": _set(b"0" * 64 + b".revoked"),
    "forged unknown": _set(b"0" * 64 + b".unknown"),
    "unsigned tombstone": _set(b"revoked"),
    "a hash": _retype("hash"),
    "a list": _retype("list"),
    "a set": _retype("set"),
    "a sorted set": _retype("zset"),
}


@pytest.mark.parametrize("mutate", RECORD_TAMPERING.values(), ids=RECORD_TAMPERING.keys())
def test_tampered_record_is_absent_reloaded_and_counted(raw_redis, mutate):
    new = apikeys.create("alice", daily_limit=3)
    assert apikeys.check(new.raw_key).used_today == 1  # cached and signed
    key = _meta_key(new.raw_key)
    mutate(raw_redis, key, raw_redis.get(key))
    usage = apikeys.check(new.raw_key)
    assert (usage.allowed, usage.key_id, usage.owner, usage.limit) == (True, new.key_id, "alice", 3)
    assert usage.used_today == 2
    assert _tampered() >= 1
    assert _records.open_meta(_tag(new.raw_key), raw_redis.get(key)).owner == "alice"  # the genuine record again
    assert [apikeys.check(new.raw_key).allowed for _ in range(3)] == [True, False, False]
    assert _usage_today(new.key_id) == 3  # exactly the allowed calls


def test_lifted_limit_counts_nothing_beyond_the_true_limit(raw_redis):
    new = apikeys.create("alice", daily_limit=3)
    apikeys.check(new.raw_key)
    for _ in range(5):  # the attacker rewrites the record before every call
        key = _meta_key(new.raw_key)
        _edit(lambda m: m.update(limit=10**9, owner="mallory"))(raw_redis, key, raw_redis.get(key))
        usage = apikeys.check(new.raw_key)
        assert usage.owner == "alice" and usage.limit == 3
    assert _usage_today(new.key_id) == 3
    assert int(raw_redis.get(_count_key(new.raw_key))) == 3
    assert _tampered() == 5


def test_swapped_records_never_answer_for_the_other_key(raw_redis):
    a, b = apikeys.create("alice", daily_limit=2), apikeys.create("bob", daily_limit=50)
    apikeys.check(a.raw_key)
    apikeys.check(b.raw_key)
    ka, kb = _meta_key(a.raw_key), _meta_key(b.raw_key)
    va, vb = raw_redis.get(ka), raw_redis.get(kb)
    raw_redis.set(ka, vb)
    raw_redis.set(kb, va)
    ua, ub = apikeys.check(a.raw_key), apikeys.check(b.raw_key)
    assert (ua.key_id, ua.owner, ua.limit) == (a.key_id, "alice", 2)
    assert (ub.key_id, ub.owner, ub.limit) == (b.key_id, "bob", 50)
    assert _tampered() == 2
    assert not apikeys.check(a.raw_key).allowed  # alice's own limit, not bob's
    assert (_usage_today(a.key_id), _usage_today(b.key_id)) == (2, 2)


def test_forged_records_cannot_revive_a_revoked_or_expired_key(raw_redis, clock):
    now = dt.datetime.fromtimestamp(clock.time(), tz=dt.UTC)
    revoked = apikeys.create("alice")
    expired = apikeys.create("alice", expires_at=now + dt.timedelta(seconds=5))
    for new in (revoked, expired):
        apikeys.check(new.raw_key)
    genuine = raw_redis.get(_meta_key(revoked.raw_key))
    apikeys.revoke(revoked.key_id)
    clock.advance(6)
    # The revoked key: its tombstone replaced by a record with a forged signature.
    raw_redis.set(_meta_key(revoked.raw_key), b"f" * 64 + genuine[64:])
    # The expired key: its expiry removed from the cached record.
    key = _meta_key(expired.raw_key)
    _edit(lambda m: m.update(exp=None))(raw_redis, key, raw_redis.get(key))
    for new in (revoked, expired):
        with pytest.raises(apikeys.InvalidKey):
            apikeys.check(new.raw_key)
        assert _usage_today(new.key_id) == 1  # the use the script counted under the forgery was given back
    assert _tampered() == 2


def test_a_genuine_record_written_back_after_revocation_is_refused_past_its_validity(raw_redis):
    new = apikeys.create("alice")
    apikeys.check(new.raw_key)
    doc = mongo.collection(apikeys.KEYS_COLLECTION, feature="test").find_one({"key_id": new.key_id})
    tag = _tag(new.raw_key)
    captured_long_ago = _records.sealed_record(doc, tag, redis_now=time.time() - 3600)  # signed an hour ago
    apikeys.revoke(new.key_id)
    raw_redis.set(_meta_key(new.raw_key), captured_long_ago)
    with pytest.raises(apikeys.InvalidKey):
        apikeys.check(new.raw_key)
    assert _tampered() == 1 and _usage_today(new.key_id) == 1
    assert _records.open_meta(tag, raw_redis.get(_meta_key(new.raw_key))).kind == "revoked"


def test_forged_unknown_marker_does_not_lock_out_a_valid_key(raw_redis):
    new = apikeys.create("alice")
    raw_redis.set(_meta_key(new.raw_key), b"0" * 64 + b".unknown", ex=60)  # before the key was ever used
    assert apikeys.check(new.raw_key).allowed
    assert _tampered() == 1


def test_tampered_record_with_mongodb_down_fails_closed_and_gives_the_use_back(raw_redis, http):
    new = apikeys.create("alice", daily_limit=5)
    apikeys.check(new.raw_key)
    key = _meta_key(new.raw_key)
    _edit(lambda m: m.update(limit=10**9))(raw_redis, key, raw_redis.get(key))
    with mongo_down():
        with pytest.raises(MongoUnavailable):
            apikeys.check(new.raw_key)
        assert http.get("/api/usage/", HTTP_X_API_KEY=new.raw_key).status_code == 503
    assert int(raw_redis.get(_count_key(new.raw_key))) == 1  # both forged uses given back
    assert apikeys.check(new.raw_key).used_today == 2


def test_tampered_record_over_http_answers_from_the_true_record(raw_redis, http):
    new = apikeys.create("alice", daily_limit=3)
    assert http.get("/api/usage/", HTTP_X_API_KEY=new.raw_key).json()["owner"] == "alice"
    key = _meta_key(new.raw_key)
    _edit(lambda m: m.update(owner="mallory", limit=10**9))(raw_redis, key, raw_redis.get(key))
    response = http.get("/api/usage/", HTTP_X_API_KEY=new.raw_key)
    assert response.status_code == 200 and response.json() == {
        "key_id": new.key_id, "owner": "alice", "used_today": 2, "remaining": 1}
    raw_redis.delete(key)
    raw_redis.hset(key, "x", "y")
    assert http.get("/api/usage/", HTTP_X_API_KEY=new.raw_key).status_code == 200
    assert http.get("/api/usage/", HTTP_X_API_KEY=new.raw_key).status_code == 429


def test_give_back_that_cannot_reach_redis_is_settled_before_the_next_check(raw_redis, monkeypatch):
    from hotcache.exceptions import RedisUnavailable

    new = apikeys.create("alice", daily_limit=5)
    apikeys.check(new.raw_key)
    key = _meta_key(new.raw_key)
    _edit(lambda m: m.update(limit=10**9))(raw_redis, key, raw_redis.get(key))
    real = _recovery.settle_doubts
    failed = []

    def flaky(r, doubts):
        if not failed:
            failed.append(doubts)
            raise RedisUnavailable("connection lost")
        return real(r, doubts)

    monkeypatch.setattr(_recovery, "settle_doubts", flaky)
    usage = apikeys.check(new.raw_key)  # decided (and counted) on MongoDB; the forged use still on Redis
    assert usage.allowed and usage.owner == "alice" and usage.limit == 5 and failed
    assert int(raw_redis.get(_count_key(new.raw_key))) == 2 and _recovery.doubts
    assert apikeys.check(new.raw_key).used_today == 3  # given back, MongoDB's use pushed as base, then counted
    assert not _recovery.doubts and int(raw_redis.get(_count_key(new.raw_key))) == 3  # 2 on Redis + the base
    apikeys.sync_usage()
    assert _usage_today(new.key_id) == 3


def test_300_concurrent_checks_under_a_forged_limit_count_exactly_the_allowed_calls(raw_redis):
    new = apikeys.create("alice", daily_limit=100)
    apikeys.check(new.raw_key)  # use 1; the record is cached
    key = _meta_key(new.raw_key)
    _edit(lambda m: m.update(limit=10**6))(raw_redis, key, raw_redis.get(key))
    barrier = threading.Barrier(30)

    def burst(_):
        barrier.wait()
        return [apikeys.check(new.raw_key).allowed for _ in range(10)]

    with ThreadPoolExecutor(30) as pool:
        allowed = 1 + sum(a for batch in pool.map(burst, range(30)) for a in batch)
    assert allowed <= 100
    assert _usage_today(new.key_id) == allowed == int(raw_redis.get(_count_key(new.raw_key)))
    while apikeys.check(new.raw_key).allowed:  # what the forgery held back is still there to use
        allowed += 1
    assert allowed == 100 == _usage_today(new.key_id)
    assert _tampered() >= 1


def test_warm_check_after_a_repair_is_one_round_trip_again(raw_redis):
    new = apikeys.create("alice", daily_limit=10)
    apikeys.check(new.raw_key)
    key = _meta_key(new.raw_key)
    _edit(lambda m: m.update(owner="mallory"))(raw_redis, key, raw_redis.get(key))
    apikeys.check(new.raw_key)
    with count_redis() as c:
        assert apikeys.check(new.raw_key).owner == "alice"
    assert (c.commands, c.round_trips, c.mongo_ops) == (1, 1, 0)


# --- tampered counters, writer records, touched index ------------------------------------------------

COUNTER_TAMPERING = {
    "counter text": ("use", b"lots"),
    "counter float": ("use", b"1.5"),
    "counter negative": ("use", b"-3"),
    "counter exponent": ("use", b"1e9"),
    "counter too long": ("use", b"9" * 40),
    "counter non-ASCII": ("use", "١٢".encode()),
    "counter a hash": ("use", None),
    "base text": ("base", b"zzz"),
    "base a list": ("base", None),
}


@pytest.mark.parametrize(("which", "value"), COUNTER_TAMPERING.values(), ids=COUNTER_TAMPERING.keys())
def test_counter_that_is_not_an_integer_is_restored_from_mongodb(raw_redis, which, value):
    new = apikeys.create("alice", daily_limit=4)
    apikeys.check(new.raw_key)
    apikeys.check(new.raw_key)
    apikeys.sync_usage()  # MongoDB's copy: 2
    tag, day = _tag(new.raw_key), _today()
    key = _records.count_key(tag, day) if which == "use" else _records.base_key(tag, day)
    raw_redis.delete(key)
    if value is None:
        raw_redis.hset(key, "n", "1") if which == "use" else raw_redis.rpush(key, "1")
    else:
        raw_redis.set(key, value)
    usage = apikeys.check(new.raw_key)
    # The day's count includes the base: a check reads the base only when it starts the count, so a base
    # replaced afterwards changes no decision (the reads below count it as tampered and read it as 0).
    assert usage.allowed and usage.used_today == 3 and _tampered() == (1 if which == "use" else 0)
    assert [apikeys.check(new.raw_key).allowed for _ in range(2)] == [True, False]
    apikeys.sync_usage()
    assert _usage_today(new.key_id) == 4
    assert apikeys.list_keys("alice")[0].used_today == 4


def test_negative_counter_and_base_are_not_counts_and_cannot_lift_the_limit(raw_redis):
    new = apikeys.create("alice", daily_limit=3)
    apikeys.check(new.raw_key)
    apikeys.sync_usage()  # MongoDB's copy of the counter: 1
    tag, day = _tag(new.raw_key), _today()
    raw_redis.set(_records.base_key(tag, day), -1000)
    raw_redis.set(_records.count_key(tag, day), -5)
    allowed = sum(apikeys.check(new.raw_key).allowed for _ in range(20))
    assert allowed == 2 and _tampered() == 2  # both restored from MongoDB: 1 + 2 = the limit


def test_garbage_counters_in_reports_and_sync_are_absent_not_errors(raw_redis):
    new = apikeys.create("alice")
    apikeys.check(new.raw_key)
    apikeys.sync_usage()
    raw_redis.set(_count_key(new.raw_key), b"\xff\xfe")
    assert apikeys.usage(new.key_id, days=1)[0][1] == 1  # MongoDB's copy stands
    assert apikeys.list_keys()[0].used_today == 1
    assert apikeys.usage_many([new.key_id], days=2)[new.key_id][0][1] == 1
    assert apikeys.sync_usage().written == 0
    raw_redis.delete(_count_key(new.raw_key))
    raw_redis.hset(_count_key(new.raw_key), "a", "b")
    assert apikeys.usage(new.key_id, days=1)[0][1] == 1 and apikeys.sync_usage().redis_available
    assert _tampered() >= 4


@pytest.mark.parametrize("kind", ["a hash", "garbage", "huge sequence"])
def test_tampered_writer_records_are_dropped_and_the_use_counted_once(raw_redis, kind):
    new = apikeys.create("alice", daily_limit=10)
    apikeys.check(new.raw_key)
    tok = _records.writer_key(_tag(new.raw_key), recovery.writer())
    if kind == "a hash":
        raw_redis.delete(tok)
        raw_redis.hset(tok, "x", "y")
    else:
        value = "not-a-seq" if kind == "garbage" else "9" * 30 + ":0"
        raw_redis.set(tok, value)
    usage = apikeys.check(new.raw_key)
    assert usage.allowed and usage.used_today == 2 and _tampered() == 1
    assert apikeys.check(new.raw_key).used_today == 3


def test_resolve_and_base_scripts_survive_tampered_records(raw_redis, clock):
    new = apikeys.create("alice")
    apikeys.check(new.raw_key)
    tag, day = _tag(new.raw_key), _today()
    raw_redis.set(_records.count_key(tag, day), "junk")
    raw_redis.hset(_records.writer_key(tag, "w:1"), "junk", "junk")
    doubt = _recovery.Doubt("w:1", 5, tag, day, key_id=new.key_id, allowed=True)
    _recovery.doubts.add(doubt.writer, doubt)
    redis_backend.call("t", lambda r: _recovery.settle_doubts(r, [doubt]))
    assert int(raw_redis.get(_records.count_key(tag, day))) == 1  # restarted, then this doubt's use
    raw_redis.set(_records.base_key(tag, day), "junk")
    assert _recovery.push_bases([(tag, day, 3)]) == 1
    assert raw_redis.get(_records.base_key(tag, day)) == b"3"
    assert raw_redis.get(_records.count_key(tag, day)) == b"4"  # the count includes the base
    assert _tampered() == 2


@pytest.mark.parametrize("value", [b"junk", b"-1", None])
def test_taken_back_count_that_is_not_a_count_is_absent_and_restarted(raw_redis, value):
    new = apikeys.create("alice", daily_limit=5)
    for _ in range(2):
        apikeys.check(new.raw_key)
    undo = _records.undo_key(_tag(new.raw_key), _today())
    raw_redis.set(undo, value) if value is not None else raw_redis.hset(undo, "n", "1")
    assert _usage_today(new.key_id) == 2 and apikeys.list_keys("alice")[0].used_today == 2
    assert apikeys.sync_usage().written == 1 and _usage_today(new.key_id) == 2
    assert _tampered() == (0 if value is None else 4)  # each read counts it; a hash reads as absent (MGET)
    doubt = _recovery.Doubt("w:1", 5, _tag(new.raw_key), _today(), key_id=new.key_id)
    raw_redis.set(_records.writer_key(doubt.tag, doubt.writer), "5:0")  # as if that check had counted
    _recovery.doubts.add(doubt.writer, doubt)
    redis_backend.call("t", lambda r: _recovery.settle_doubts(r, [doubt]))  # refused: taken back
    assert raw_redis.get(undo) == b"1" and int(raw_redis.get(_count_key(new.raw_key))) == 1
    apikeys.sync_usage()
    assert _usage_today(new.key_id) == 1


def test_forged_touched_index_members_never_reach_the_history(raw_redis):
    victim = apikeys.create("victim")
    attacker = apikeys.create("attacker")
    apikeys.check(victim.raw_key)
    for _ in range(50):
        apikeys.check(attacker.raw_key)
    day = _today()
    index = _records.touched_key(day)
    forged = [
        f"{victim.key_id}:{_tag(attacker.raw_key)}",  # the victim's id with the attacker's counter
        f"ak_{'e' * 16}:{_tag(attacker.raw_key)}",  # a key that does not exist
        _records.touched_member(day - dt.timedelta(days=1), f"{victim.key_id}:{_tag(attacker.raw_key)}"),
        "0" * 64 + f".{victim.key_id}:{_tag(attacker.raw_key)}",
        "\xff garbage",
    ]
    raw_redis.sadd(index, *forged)
    result = apikeys.sync_usage()
    assert result.written == 2
    assert _usage_today(victim.key_id) == 1 and _usage_today(attacker.key_id) == 50
    ids = {d["key_id"] for d in mongo.collection(apikeys.USAGE_COLLECTION, feature="test").find({})}
    assert ids == {victim.key_id, attacker.key_id}
    assert _tampered() == 1  # one index held them; they are removed
    assert not any(raw_redis.sismember(index, m) for m in forged)


def test_members_of_an_index_written_before_signing_are_confirmed_on_mongodb(raw_redis):
    new = apikeys.create("alice")
    for _ in range(3):
        apikeys.check(new.raw_key)
    index = _records.touched_key(_today())
    raw_redis.delete(index)
    raw_redis.sadd(index, f"{new.key_id}:{_tag(new.raw_key)}")  # the unsigned shape of earlier releases
    assert apikeys.sync_usage().written == 1 and _tampered() == 0
    assert mongo.collection(apikeys.USAGE_COLLECTION, feature="test").find_one({"key_id": new.key_id})["redis"] == 3


def test_touched_index_of_the_wrong_type_is_replaced_not_a_lasting_failure(raw_redis):
    new = apikeys.create("alice")
    index = _records.touched_key(_today(), _tag(new.raw_key))  # the set (bucket) its first use goes to
    raw_redis.set(index, "not a set")
    with count_redis() as c:
        assert apikeys.check(new.raw_key).used_today == 1  # first use: indexed, the bad key replaced
    assert c.mongo_ops == 1 and not _recovery.touched
    assert raw_redis.type(index) == b"set" and _tampered() == 1
    with count_redis() as c:
        apikeys.check(new.raw_key)
    assert (c.commands, c.round_trips, c.mongo_ops) == (1, 1, 0)
    raw_redis.delete(index)
    raw_redis.rpush(index, "x")
    assert apikeys.sync_usage().redis_available and _tampered() == 2


# --- the outage path keeps the same bounds ------------------------------------------------------------


def test_outage_path_keeps_the_daily_limit_and_writes_one_document_per_key_and_day(redis_down):
    new = apikeys.create("alice", daily_limit=5)
    results = [apikeys.check(new.raw_key).allowed for _ in range(12)]
    assert sum(results) == 5
    for i in range(30):  # made-up and malformed keys: no document, no pending state
        with pytest.raises(apikeys.InvalidKey):
            apikeys.check(f"zzzzzzz{i % 10}." + "Q" * 43 if i % 2 else "\ud800" * i)
    docs = mongo.collection(apikeys.USAGE_COLLECTION, feature="test").find({})
    assert len(docs) == 1 and docs[0]["fallback"] == 5
    assert len(_recovery.bases) == 1 and not _recovery.touched


def test_outage_path_applies_expiry_like_the_redis_path(redis_down, clock):
    now = dt.datetime.fromtimestamp(clock.time(), tz=dt.UTC)
    new = apikeys.create("alice", expires_at=now + dt.timedelta(seconds=30))
    assert apikeys.check(new.raw_key).allowed
    clock.advance(30)
    with pytest.raises(apikeys.InvalidKey):
        apikeys.check(new.raw_key)
