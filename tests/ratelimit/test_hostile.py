"""Hostile input and tampered counters for rate limiting: never a 500, never an exception out of the
middleware, the documented error from the Python API, sane headers, and the store left as documented.

Documented outcomes: a client-supplied identifier (header, GET/POST field, API key) that is empty, over 256
characters, or holds a control character or lone surrogate is *no identifier* (the rule's on_missing_key
applies); an unusable client address likewise; bad arguments to the decorator API raise ImproperlyConfigured;
a bad Limit raises InvalidName / InvalidRate (both ValueError); a counter that is not sound (another type,
figures out of range) is absent, counted as ev:ratelimit:tampered and rewritten by the next counting request.
"""

import json
import uuid
from types import SimpleNamespace

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, RequestFactory

from hotcache import metering
from hotcache import ratelimit as rl
from hotcache.backends import redis as redis_backend
from hotcache.checks import check_ratelimit
from hotcache.exceptions import InvalidName
from hotcache.ratelimit import (
    InvalidRate,
    Limit,
    evaluate,
    get_usage,
    is_ratelimited,
    key_value,
    limit_keys,
    parse_rate,
)
from hotcache.ratelimit.state import local_state
from hotcache.ratelimit_middleware import compiled_rules
from tests.ratelimit.fixtures import ratelimit_middleware  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("ratelimit_middleware")

rf = RequestFactory()
PROXY = "10.0.0.1"


@pytest.fixture(params=["redis up", "redis down"])
def redis_state(request):
    """Each test runs with Redis up and with hotcache's Redis alias pointing at a closed port."""
    if request.param == "redis down":
        request.getfixturevalue("redis_down")
    return request.param


@pytest.fixture
def store(raw_redis, key_prefix, redis_state):
    """What the rate limiter holds: its Redis keys (Redis up) or the local limiter's entries (Redis down)."""

    class Store:
        def __init__(self):
            self.local, self.keys = self._now()

        def _now(self):
            keys = set(raw_redis.scan_iter(match=f"{key_prefix}:{{ratelimit:*", count=1000))
            return len(local_state().outage.limiter), keys

        def unchanged(self):
            # New keys only: other tests' keys may expire meanwhile.
            local, keys = self._now()
            return local == self.local and not keys - self.keys

    return Store


@pytest.fixture
def rules(hotcache_config):
    def apply(*items, **extra):
        hotcache_config(RATELIMIT_RULES=list(items), **extra)

    return apply


def ip():
    n = uuid.uuid4().int
    return f"198.18.{n % 250}.{(n >> 8) % 250 + 1}"


def tampered():
    return metering.snapshot()["ev:ratelimit:tampered"]


HOSTILE_TEXT = [
    pytest.param("", id="empty"),
    pytest.param("a\x00b", id="NUL"),
    pytest.param("\x1b[31mred", id="ANSI escape"),
    pytest.param("line\nbreak", id="newline"),
    pytest.param("tab\there", id="tab"),
    pytest.param("del\x7f", id="DEL"),
    pytest.param("c1\x85", id="C1 control (latin-1 byte 0x85)"),
    pytest.param("\ud800", id="lone surrogate"),
    pytest.param("ok\udfff", id="trailing lone surrogate"),
    pytest.param("x" * 257, id="over 256 characters"),
    pytest.param("x" * 100_000, id="100 KB"),
    pytest.param(12345, id="an int"),
    pytest.param(b"bytes", id="bytes"),
    pytest.param(["list"], id="a list"),
    pytest.param({"json": {"nested": [1, 2, {"deep": None}]}}, id="a JSON object"),
]


# -- the Python API -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rate",
    [
        "\ud800/m",
        "1\x00/m",
        "1" * 5000 + "/m",
        "1/" + "9" * 5000 + "s",
        "\uff11/m",
        "1/m\x00",
        "10000000000000/m",
        "1/400d",
        ("a", "b"),
        (True, 1),
        (10**13, 60),
        (1, 10**9),
        (1.5, 60),
        None,
        b"1/m",
        1.5,
        [1, 60],
        {"rate": 1},
        ((((1, 60),),),),
    ],
)
def test_parse_rate_refuses_hostile_rates_with_invalid_rate(rate):
    with pytest.raises(InvalidRate):
        parse_rate(rate)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": "\ud800"}, InvalidName),
        ({"name": "a\x00b"}, InvalidName),
        ({"name": ""}, InvalidName),
        ({"name": "n" * 201}, InvalidName),
        ({"name": 5}, InvalidName),
        ({"name": ["x"]}, InvalidName),
        ({"identifier": None}, InvalidName),
        ({"identifier": 5}, InvalidName),
        ({"identifier": "x" * 257}, InvalidName),
        ({"limit": -1}, InvalidRate),
        ({"limit": 1.5}, InvalidRate),
        ({"limit": True}, InvalidRate),
        ({"limit": 10**13}, InvalidRate),
        ({"window": 0}, InvalidRate),
        ({"window": "60"}, InvalidRate),
        ({"window": 10**9}, InvalidRate),
        ({"cost": 0}, InvalidRate),
        ({"cost": -3}, InvalidRate),
        ({"cost": None}, InvalidRate),
    ],
)
def test_a_hostile_limit_is_refused_before_it_reaches_a_store(store, kwargs, error):
    before = store()
    fields = {"name": "n", "identifier": uuid.uuid4().hex, "limit": 5, "window": 60, **kwargs}
    with pytest.raises(error) as info:
        evaluate([Limit(**fields)])
    assert isinstance(info.value, ValueError)
    assert before.unchanged()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"group": "g\x00"},
        {"group": "\ud800"},
        {"group": "g" * 300},
        {"group": "g", "method": ["GET", "\x00"]},
        {"group": "g", "rate": "lots"},
        {"group": "g", "rate": "1" * 5000 + "/m"},
        {"group": "g", "rate": ["1/m"]},
        {"group": "g", "key": "cookie:session"},
        {"group": "g", "key": 42},
        {"group": "g", "key": ["ip"]},
        {"group": "g", "key": "no.such.module.fn"},
        {"group": "g", "key": "\ud800"},
        {"group": "g", "key": ""},
        {"group": "g", "rate": lambda g, r: "\x00/m"},
    ],
)
def test_get_usage_refuses_hostile_arguments_with_improperly_configured(store, kwargs):
    before = store()
    call = {"key": "ip", "rate": "5/m", **kwargs}
    with pytest.raises(ImproperlyConfigured):
        get_usage(rf.get("/", REMOTE_ADDR=ip()), increment=True, **call)
    assert before.unchanged()


@pytest.mark.parametrize("value", HOSTILE_TEXT)
@pytest.mark.parametrize("key", ["header:x-team", "get:team", "api_key"])
def test_a_hostile_client_identifier_is_no_identifier(key, value):
    # QueryDict decodes bytes itself, so those reach the key as plain text.
    expected = "bytes" if key == "get:team" and isinstance(value, bytes) else None
    request = rf.get("/", REMOTE_ADDR=ip())
    if key == "get:team":
        request.GET = request.GET.copy()
        request.GET.setlist("team", [value])
        request.GET._mutable = False
    else:
        request.META["HTTP_X_TEAM" if key.startswith("header") else "HTTP_X_API_KEY"] = value
    assert key_value(key, request, "g") == expected


@pytest.mark.parametrize(
    "pk",
    ["a\x00b", "\ud800", "é", "x" * 10_000, "7", 7, 0, -1, 1.5, uuid.UUID(int=1), ("tuple", "pk"), "{tag}:*?[x]"],
    ids=lambda pk: repr(pk)[:20],
)
def test_odd_user_ids_get_their_own_bounded_bucket(store, redis_state, raw_redis, key_prefix, pk):
    group = f"g-{uuid.uuid4().hex}"
    user = SimpleNamespace(is_authenticated=True, pk=pk)
    other = SimpleNamespace(is_authenticated=True, pk=f"other-{uuid.uuid4().hex}")

    def request(who):
        r = rf.get("/", REMOTE_ADDR=ip())
        r.user = who
        return r

    outcomes = [is_ratelimited(request(user), group=group, key="user", rate="2/m", increment=True) for _ in range(3)]
    assert outcomes == [False, False, True]
    assert not is_ratelimited(request(other), group=group, key="user", rate="2/m", increment=True)
    if redis_state == "redis up":
        assert all(len(k) < 200 for k in raw_redis.scan_iter(match=f"{key_prefix}:{{ratelimit:*", count=1000))


def test_a_user_without_a_pk_is_anonymous():
    request = rf.get("/", REMOTE_ADDR=ip())
    request.user = SimpleNamespace(is_authenticated=True, pk=None)
    assert key_value("user", request, "g") is None


def test_a_group_from_a_callable_object_without_qualname():
    class View:
        def __call__(self, request):
            return "ok"

    assert get_usage(rf.get("/", REMOTE_ADDR=ip()), fn=View(), key="ip", rate="5/m")["limit"] == 5


# -- HTTP: the middleware and the decorator ------------------------------------------------------------------


@pytest.mark.parametrize("value", [p for p in HOSTILE_TEXT if isinstance(p.values[0], str)])
def test_hostile_header_values_through_the_middleware(rules, store, value):
    rules(
        {"name": "team", "rate": "1/m", "key": "header:x-team", "path": "/other/"},
        {"name": "team-strict", "rate": "1/m", "key": "header:x-team", "path": "/login/", "on_missing_key": "deny"},
    )
    c = Client()
    before = store()
    assert [c.get("/other/", REMOTE_ADDR=ip(), HTTP_X_TEAM=value).status_code for _ in range(3)] == [200] * 3
    assert before.unchanged()  # skipped: nothing counted
    resp = c.get("/login/", REMOTE_ADDR=ip(), HTTP_X_TEAM=value)
    assert resp.status_code == 429 and resp["Retry-After"] == "60"
    assert before.unchanged()


@pytest.mark.parametrize(
    "xff",
    [
        "garbage",
        "1.1.1.1, garbage",
        "<script>alert(1)</script>",
        "\xff\xfe\xfd",
        "\x00",
        ",,,,",
        "1.2.3.4" * 1000,
        ", ".join(["10.0.0.9"] * 100),
        "[::1",
        "999.999.999.999",
        "1.2.3.4:99999",
        "fe80::1%eth0",
        "unknown",
        "2001:db8::1/64",
        "0x7f.1",
        "\u0661.\u0661.\u0661.\u0661",
    ],
)
def test_garbage_forwarded_for_cannot_move_a_client_out_of_its_proxys_bucket(rules, redis_state, xff):
    rules({"name": "per-ip", "rate": "2/m", "key": "ip", "headers": True}, TRUSTED_PROXIES=["10.0.0.0/8"])
    n = uuid.uuid4().int
    proxy = f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"
    c = Client()
    codes = [c.get("/other/", REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=xff).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


@pytest.mark.parametrize(
    ("remote", "same_as"),
    [
        ("", None),
        ("unix:", None),
        ("unix:/run/gunicorn.sock", None),
        ("fe80::1%eth0", None),
        ("999.1.1.1", None),
        ("\x00", None),
        ("\xff\xfe", None),
        ("x" * 10_000, None),
        (" ", None),
        ("::ffff:192.0.2.77", "192.0.2.77"),
        ("192.0.2.78:5678", "192.0.2.78"),
        ("[2001:db8:5::1]:80", "2001:db8:5::2"),
        ('"192.0.2.79"', "192.0.2.79"),
    ],
)
def test_odd_remote_addr_values_through_the_middleware_and_the_decorator(rules, redis_state, remote, same_as):
    rule = f"r-{uuid.uuid4().hex[:8]}"
    rules({"name": rule, "rate": "1/m", "key": "ip", "path": "/other/"})
    c = Client(raise_request_exception=False)
    first = c.get("/other/", REMOTE_ADDR=remote)
    assert first.status_code in (200, 429)  # 429 when an earlier request already used the shared bucket
    if same_as is not None:
        assert first.status_code == 200
        assert c.get("/other/", REMOTE_ADDR=same_as).status_code == 429  # the same client as far as limits go
    # Under RateLimitMiddleware a blocked @ratelimit view answers 429 (Django's 403 without the middleware).
    assert c.get("/deco/", REMOTE_ADDR=remote).status_code in (200, 429)


@pytest.mark.parametrize(
    "method", ["FOO", "PROPFIND", "get", "X" * 1000, "M-SEARCH", "BREW", "OPTIONS", "TRACE", "CONNECT", "HEAD"]
)
def test_odd_methods_never_500_and_method_rules_match_exactly(rules, redis_state, method):
    rules(
        {"name": "posts", "rate": "1/m", "key": "ip", "methods": ["POST"]}, {"name": "all", "rate": "2/m", "key": "ip"}
    )
    c, addr = Client(raise_request_exception=False), ip()
    codes = [c.generic(method, "/other/", REMOTE_ADDR=addr).status_code for _ in range(3)]
    assert codes[:2] == [200, 200] and codes[2] == 429  # 'posts' never applied; 'all' did
    assert c.generic(method, "/unsafe/", REMOTE_ADDR=addr).status_code in (200, 403, 405, 429)


@pytest.mark.parametrize(
    "path",
    [
        "/%00/",
        "/%ff%fe/",
        "/..%2f..%2fetc/passwd",
        "/" + "a" * 10_000,
        "/other/?" + "x=1&" * 2000,
        "/ü/",
        "//other/",
        "/other/%0d%0aSet-Cookie:x=1",
        "/api/items/\t",
        "/%ED%A0%80/",
        "/other/;x=1",
    ],
)
def test_odd_paths_never_500(rules, redis_state, path):
    rules(
        {"name": "regex", "rate": "100/m", "key": "ip", "path": r"^/api/\w+/$"},
        {"name": "named", "rate": "100/m", "key": "ip", "url_name": ["other", "items"]},
        {"name": "prefix", "rate": "100/m", "key": "ip", "path": "/"},
    )
    resp = Client(raise_request_exception=False).get(path, REMOTE_ADDR=ip())
    assert resp.status_code in (200, 404)


def test_post_field_rules_and_bodies_django_refuses(rules, settings, store):
    rules({"name": "form", "rate": "1/m", "key": "post:team"})
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    c = Client(raise_request_exception=False)
    before = store()
    huge = c.post(
        "/other/", data="team=" + "x" * 5000, content_type="application/x-www-form-urlencoded", REMOTE_ADDR=ip()
    )
    many = c.post(
        "/other/",
        data="&".join(f"f{i}=1" for i in range(50)),
        content_type="application/x-www-form-urlencoded",
        REMOTE_ADDR=ip(),
    )
    assert (huge.status_code, many.status_code) == (400, 400)  # Django's own answer, as in the view
    wrong_types = c.post(
        "/other/",
        data=json.dumps({"team": {"deep": [[[[[["x"]]]]]]}}),
        content_type="application/json",
        REMOTE_ADDR=ip(),
    )
    assert wrong_types.status_code == 200  # no form field: the rule does not apply (skip)
    assert before.unchanged()
    broken = c.post(
        "/other/",
        data=b'--x\r\nContent-Disposition: form-data; name="team"\r\n\r\nno end',
        content_type="multipart/form-data; boundary=x",
        REMOTE_ADDR=ip(),
    )
    assert broken.status_code in (200, 400)
    team = "t-" + uuid.uuid4().hex
    assert [c.post("/other/", {"team": team}, REMOTE_ADDR=ip()).status_code for _ in range(2)] == [200, 429]


@pytest.mark.parametrize(
    "rule",
    [
        {"name": 5, "rate": "1/m", "key": "ip"},
        {"name": "r", "rate": ["1/m"], "key": "ip"},
        {"name": "r", "rate": "1/m", "key": {"ip": True}},
        {"name": "r", "rate": "1/m", "key": "ip", "methods": "POST"},
        {"name": "r", "rate": "1/m", "key": "ip", "cost": "1"},
        {"name": "r", "rate": "1/m", "key": "ip", "headers": "yes"},
        {"name": "r", "rate": "1/m", "key": "ip", "path": 5},
        {"name": "r", "rate": "1/m", "key": "ip", "url_name": {}},
        {"name": "r", "rate": "1/m", "key": "ip", "on_missing_key": []},
        {"name": "r", "rate": "1/m", "key": "ip", "policy": {"x": [[[[1]]]]}},
        {"name": "r\x00", "rate": "1/m", "key": "ip"},
        {"name": "r", "rate": "1/m", "key": "header:\ud800", "on_missing_key": "deny"},
        [[[[[[["nested"]]]]]]],
        None,
        "r",
        5,
    ],
    ids=lambda r: repr(r)[:40],
)
def test_rules_with_wrong_json_types_are_check_errors_and_skipped(rules, rule):
    rules(rule, {"name": "good", "rate": "1/m", "key": "ip"})
    assert any(m.id.startswith("hotcache.E01") for m in check_ratelimit())
    names = [r.name for r in compiled_rules()]
    c, addr = Client(), ip()
    assert [c.get("/other/", REMOTE_ADDR=addr).status_code for _ in range(2)] == [200, 429]
    assert "good" in names


# -- tampered counters ---------------------------------------------------------------------------------------------


def _ip_rule(rules, limit=5, window=60):
    name = f"t-{uuid.uuid4().hex[:8]}"
    rules({"name": name, "rate": f"{limit}/{window}s", "key": "ip", "headers": True})
    addr = ip()
    return name, addr, limit_keys(Limit(name, addr, limit, window))[0]


def _assert_sane(resp, limit, window):
    assert resp.status_code in (200, 429)
    ((r, t),) = [
        (int(p.split(";r=")[1].split(";")[0]), int(p.rsplit(";t=", 1)[1])) for p in resp["RateLimit"].split(", ")
    ]
    assert 0 <= r <= limit and 0 <= t <= 2 * window
    if resp.status_code == 429:
        assert 1 <= int(resp["Retry-After"]) <= 2 * window


def _field(index, value):
    """Write one i64 field (0: window id, 1: even count, 2: odd count) of a counter in place."""
    return lambda r, k: r.bitfield(k).set("i64", f"#{index}", value).execute()


DETECTED = [
    pytest.param(_field(0, -1), id="window id negative"),
    pytest.param(_field(0, 2**62), id="window id out of range"),
    pytest.param(lambda r, k: (_field(1, -100_000)(r, k), _field(2, -100_000)(r, k)), id="counts negative"),
    pytest.param(lambda r, k: (_field(1, 2**60)(r, k), _field(2, 2**60)(r, k)), id="counts out of range"),
    pytest.param(lambda r, k: r.set(k, "5", keepttl=True), id="a short string"),
    pytest.param(lambda r, k: r.set(k, "nan"), id="text without TTL"),
    pytest.param(lambda r, k: r.set(k, b"\xff" * 24, keepttl=True), id="all bits set"),
    pytest.param(lambda r, k: r.set(k, b"\xff\xfe", keepttl=True), id="not UTF-8"),
    pytest.param(lambda r, k: (r.delete(k), r.hset(k, mapping={"w": 1, "0": 1, "1": 0})), id="wrong type: hash"),
    pytest.param(lambda r, k: (r.delete(k), r.rpush(k, "5"), r.persist(k)), id="wrong type: list without TTL"),
    pytest.param(lambda r, k: (r.delete(k), r.sadd(k, "5")), id="wrong type: set"),
    pytest.param(lambda r, k: (r.delete(k), r.zadd(k, {"w": 1})), id="wrong type: zset"),
]


@pytest.mark.parametrize("mutate", DETECTED)
def test_a_corrupt_counter_is_absent_counted_and_rewritten(rules, raw_redis, mutate):
    name, addr, key = _ip_rule(rules)
    c = Client()
    assert c.get("/other/", REMOTE_ADDR=addr).status_code == 200
    mutate(raw_redis, key)
    before = tampered()
    resp = c.get("/other/", REMOTE_ADDR=addr)
    _assert_sane(resp, 5, 60)
    assert resp.status_code == 200 and resp["RateLimit"] == f'"{name}";r=4;t={resp["RateLimit"].rsplit("=", 1)[1]}'
    assert tampered() == before + 1
    # rewritten as a sound counter with its TTL: the next requests count normally and nothing more is reported
    assert raw_redis.type(key) == b"string" and 0 < raw_redis.pttl(key) <= 120_000
    assert raw_redis.strlen(key) == 24
    assert [c.get("/other/", REMOTE_ADDR=addr).status_code for _ in range(5)] == [200] * 4 + [429]
    assert tampered() == before + 1


@pytest.mark.parametrize("mutate", DETECTED[:6] + DETECTED[-4:])
def test_a_peek_at_a_corrupt_counter_reports_it_and_changes_nothing(raw_redis, mutate):
    lim = Limit("peek", uuid.uuid4().hex, 5, 60)
    evaluate([lim])
    key = limit_keys(lim)[0]
    mutate(raw_redis, key)
    dumped = raw_redis.dump(key)
    before = tampered()
    result = evaluate([lim], increment=False).results[0]
    assert result.allowed and result.remaining == 4 and 0 <= result.reset <= 60
    assert tampered() == before + 1 and raw_redis.dump(key) == dumped


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(
            lambda r, k: (_field(1, 10**15)(r, k), _field(2, 10**15)(r, k)),
            id="largest sound counts: denied, sane Retry-After",
        ),
        pytest.param(_field(0, 99999999999999), id="window id far in the future"),
        pytest.param(lambda r, k: (_field(1, 0)(r, k), _field(2, 0)(r, k)), id="counts reset (as a DEL would)"),
        pytest.param(lambda r, k: r.append(k, "\x00\xff"), id="extra bytes"),
        pytest.param(lambda r, k: r.set(k, r.get(k)[:8], keepttl=True), id="counts truncated away"),
    ],
)
def test_sound_but_edited_counts_are_only_counts_with_sane_headers(rules, raw_redis, mutate):
    # Documented: counters are not signed; whoever can write Redis can reset or raise them (as deleting
    # or writing the key would). What holds: no 500, remaining/reset/Retry-After stay in range.
    _, addr, key = _ip_rule(rules)
    c = Client()
    c.get("/other/", REMOTE_ADDR=addr)
    mutate(raw_redis, key)
    before = tampered()
    for _ in range(3):
        _assert_sane(c.get("/other/", REMOTE_ADDR=addr), 5, 60)
    assert tampered() == before


def test_swapped_counters_are_only_counts(rules, raw_redis):
    name, a, key_a = _ip_rule(rules, limit=2)
    b = ip()
    key_b = limit_keys(Limit(name, b, 2, 60))[0]
    c = Client()
    assert [c.get("/other/", REMOTE_ADDR=a).status_code for _ in range(3)] == [200, 200, 429]
    assert c.get("/other/", REMOTE_ADDR=b).status_code == 200
    rl.reset_local_state()  # forget a's denial, so Redis decides
    # Swap the two keys' values and TTLs as RENAMEs through a temporary key would, but with DUMP/RESTORE:
    # on a Redis Cluster the two counters live in different slots, where RENAME is refused (CROSSSLOT).
    saved = {key: (raw_redis.dump(key), max(raw_redis.pttl(key), 0)) for key in (key_a, key_b)}
    for key, other in ((key_a, key_b), (key_b, key_a)):
        payload, ttl_ms = saved[other]
        raw_redis.restore(key, ttl_ms, payload, replace=True)
    _assert_sane(c.get("/other/", REMOTE_ADDR=a), 2, 60)
    resp = c.get("/other/", REMOTE_ADDR=b)
    _assert_sane(resp, 2, 60)
    assert resp.status_code == 429


def test_corrupting_one_rules_counter_leaves_the_others_counting(rules, raw_redis):
    rules(
        {"name": "burst", "rate": "3/10s", "key": "ip", "headers": True},
        {"name": "slow", "rate": "2/h", "key": "ip", "headers": True},
    )
    c, addr = Client(), ip()
    assert c.get("/other/", REMOTE_ADDR=addr).status_code == 200
    raw_redis.set(limit_keys(Limit("burst", addr, 3, 10))[0], "x")
    before = tampered()
    assert [c.get("/other/", REMOTE_ADDR=addr).status_code for _ in range(2)] == [200, 429]  # slow: 2 per hour
    assert tampered() == before + 1


@pytest.mark.parametrize(
    "reply",
    [[1, -5, 10**12, -3, []], [0, 10**9, -1, 10**18, []], [1, 4, 30_000, 1, [7, 0, -1]], [0, 0, 10**15, 6]],
)
def test_out_of_range_script_figures_are_clamped_and_counted(rules, monkeypatch, reply):
    _, addr, _ = _ip_rule(rules)
    monkeypatch.setattr(redis_backend.Script, "__call__", lambda self, *a, **k: reply)
    before = tampered()
    resp = Client().get("/other/", REMOTE_ADDR=addr)
    _assert_sane(resp, 5, 60)
    assert resp.status_code == (200 if reply[0] == 1 else 429)
    assert tampered() >= before + (0 if reply == [1, 4, 30_000, 1, [7, 0, -1]] else 1)


@pytest.mark.parametrize("reply", ["OK", None, 5, [1], [[1, 2, 3, 4]], [b"x", b"y", b"z", b"w", []], {"a": 1}])
def test_a_reply_of_the_wrong_shape_applies_the_outage_policy(rules, monkeypatch, reply):
    rules({"name": "shape", "rate": "5/m", "key": "ip", "policy": "closed", "headers": True})
    monkeypatch.setattr(redis_backend.Script, "__call__", lambda self, *a, **k: reply)
    resp = Client().get("/other/", REMOTE_ADDR=ip())
    assert resp.status_code == 429 and 1 <= int(resp["Retry-After"]) <= 60
