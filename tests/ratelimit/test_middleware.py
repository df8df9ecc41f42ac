"""RateLimitMiddleware under WSGI and ASGI: matching, 429 + Retry-After, IETF headers, request.ratelimit."""

import json
import uuid

import pytest
from django.test import Client

from hotcache.testing import count_redis
from tests.ratelimit.fixtures import async_client, ratelimit_middleware  # noqa: F401 - fixture

# Every test here runs through RateLimitMiddleware with fresh limiter state (tests.ratelimit.fixtures).
pytestmark = pytest.mark.usefixtures("ratelimit_middleware")


@pytest.fixture
def rules(hotcache_config):
    def apply(*items, **extra):
        hotcache_config(RATELIMIT_RULES=list(items), **extra)

    return apply


def ip():
    n = uuid.uuid4().int
    return f"198.18.{n % 250}.{(n >> 8) % 250 + 1}"


def test_denied_request_gets_429_retry_after_and_json(rules):
    rules({"name": "login-burst", "rate": "2/m", "key": "ip", "path": "/login/", "methods": ["POST"]})
    c, addr = Client(), ip()
    codes = [c.post("/login/", REMOTE_ADDR=addr).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    resp = c.post("/login/", REMOTE_ADDR=addr)
    assert resp.status_code == 429
    assert int(resp["Retry-After"]) >= 1
    body = json.loads(resp.content)
    assert body["rule"] == "login-burst" and body["retry_after"] == int(resp["Retry-After"])


def test_rule_matches_only_its_methods_and_path(rules):
    rules({"name": "login-burst", "rate": "1/m", "key": "ip", "path": "/login/", "methods": ["POST"]})
    c, addr = Client(), ip()
    assert [c.get("/login/", REMOTE_ADDR=addr).status_code for _ in range(3)] == [200, 200, 200]
    assert [c.post("/other/", REMOTE_ADDR=addr).status_code for _ in range(3)] == [200, 200, 200]


def test_regex_path_and_url_name_rules(rules):
    rules(
        {"name": "api", "rate": "1/m", "key": "ip", "path": r"^/api/\w+/$"},
        {"name": "named", "rate": "1/m", "key": "ip", "url_name": "other"},
    )
    c, addr = Client(), ip()
    assert [c.get("/api/items/", REMOTE_ADDR=addr).status_code for _ in range(2)] == [200, 429]
    assert [c.get("/other/", REMOTE_ADDR=addr).status_code for _ in range(2)] == [200, 429]
    assert c.get("/login/", REMOTE_ADDR=addr).status_code == 200


def test_ietf_headers_for_rules_that_opt_in(rules):
    rules(
        {"name": "burst", "rate": "5/10s", "key": "ip", "headers": True},
        {"name": "daily", "rate": "1000/d", "key": "ip", "headers": True},
        {"name": "secret", "rate": "100/m", "key": "ip"},
    )
    resp = Client().get("/other/", REMOTE_ADDR=ip())
    assert resp["RateLimit-Policy"] == '"burst";q=5;w=10, "daily";q=1000;w=86400'
    parts = resp["RateLimit"].split(", ")
    assert parts[0].startswith('"burst";r=4;t=') and parts[1].startswith('"daily";r=999;t=')
    assert 1 <= int(parts[0].rsplit("t=", 1)[1]) <= 10
    assert "secret" not in resp["RateLimit-Policy"]
    assert "X-RateLimit-Limit" not in resp


def test_legacy_headers_optional(rules):
    rules({"name": "burst", "rate": "5/10s", "key": "ip", "headers": True}, RATELIMIT_LEGACY_HEADERS=True)
    resp = Client().get("/other/", REMOTE_ADDR=ip())
    assert (resp["X-RateLimit-Limit"], resp["X-RateLimit-Remaining"]) == ("5", "4")
    assert 1 <= int(resp["X-RateLimit-Reset"]) <= 10


def test_headers_and_decision_come_from_one_round_trip(rules):
    rules(*({"name": f"r{i}", "rate": "100/m", "key": "ip", "headers": True} for i in range(3)))
    c, addr = Client(), ip()
    c.get("/other/", REMOTE_ADDR=addr)  # warm
    with count_redis() as counted:
        resp = c.get("/other/", REMOTE_ADDR=addr)
    assert resp["RateLimit"].count("r=98") == 3
    assert counted.by_feature["ratelimit"] == 1 and counted.round_trips == 1


def test_request_ratelimit_carries_per_rule_results(rules):
    rules({"name": "a", "rate": "10/m", "key": "ip"}, {"name": "b", "rate": "10/m", "key": "ip", "path": "/nope/"})
    resp = Client().get("/other/", REMOTE_ADDR=ip())
    assert json.loads(resp.content) == {"rules": ["a"]}


def test_status_code_is_configurable(rules):
    rules({"name": "a", "rate": "1/m", "key": "ip"}, RATELIMIT_STATUS_CODE=403)
    c, addr = Client(), ip()
    assert [c.get("/other/", REMOTE_ADDR=addr).status_code for _ in range(2)] == [200, 403]


def test_user_rule_does_not_apply_to_anonymous_and_header_keys_work(rules):
    rules({"name": "per-user", "rate": "1/m", "key": "user"},
          {"name": "client", "rate": "1/m", "key": "header:x-client"})
    c = Client()
    assert [c.get("/other/", REMOTE_ADDR=ip()).status_code for _ in range(3)] == [200, 200, 200]
    assert [c.get("/other/", HTTP_X_CLIENT="abc").status_code for _ in range(2)] == [200, 429]


def test_user_rule_counts_per_user(rules, django_user_model):
    rules({"name": "per-user", "rate": "2/m", "key": "user"})
    user = django_user_model.objects.create_user(username=f"u{uuid.uuid4().hex[:8]}", password="x")
    c = Client()
    c.force_login(user)
    assert [c.get("/other/", REMOTE_ADDR=ip()).status_code for _ in range(3)] == [200, 200, 429]


def test_api_key_is_hashed_before_it_reaches_a_key(rules, raw_redis, key_prefix):
    rules({"name": "per-key", "rate": "1/m", "key": "api_key"})
    secret = "sk_live_" + uuid.uuid4().hex
    c = Client()
    assert [c.get("/other/", HTTP_X_API_KEY=secret).status_code for _ in range(2)] == [200, 429]
    assert c.get("/other/", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 429
    for key in raw_redis.scan_iter(match=f"{key_prefix}:*", count=1000):
        assert secret.encode() not in key


def test_asgi_path_limits_and_sets_headers(rules):
    rules({"name": "async-rule", "rate": "2/m", "key": "ip", "headers": True})
    addr = ip()
    c = async_client(addr)

    async def run():
        return [await c.get("/async/") for _ in range(3)]

    from asgiref.sync import async_to_sync

    responses = async_to_sync(run)()
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0]["RateLimit"].startswith('"async-rule";r=1;')
    assert json.loads(responses[0].content) == {"rules": ["async-rule"]}
    assert int(responses[2]["Retry-After"]) >= 1


def test_asgi_user_rule_resolves_the_user(rules, django_user_model):
    rules({"name": "per-user", "rate": "1/m", "key": "user_or_ip"})
    user = django_user_model.objects.create_user(username=f"a{uuid.uuid4().hex[:8]}", password="x")
    clients = [async_client(ip()) for _ in range(2)]
    for c in clients:
        c.force_login(user)

    async def run():
        return [(await c.get("/async/")).status_code for c in clients]

    from asgiref.sync import async_to_sync

    assert async_to_sync(run)() == [200, 429]  # different IPs, same user


def test_invalid_rules_are_skipped_not_a_500(rules):
    rules({"name": "bad", "rate": "lots", "key": "ip"}, {"name": "good", "rate": "1/m", "key": "ip"})
    c, addr = Client(), ip()
    assert [c.get("/other/", REMOTE_ADDR=addr).status_code for _ in range(2)] == [200, 429]


def test_api_key_rules_read_the_configured_api_key_header(settings, hotcache_config):
    """One parser with hotcache.apikeys: APIKEY_HEADER is honoured, not a hard-coded X-Api-Key."""
    from django.test import RequestFactory

    from hotcache.ratelimit.identifiers import key_value

    hotcache_config(APIKEY_HEADER="X-Client-Key")
    rf = RequestFactory()
    by_custom = key_value("api_key", rf.get("/", HTTP_X_CLIENT_KEY="k-123"), "g")
    by_auth = key_value("api_key", rf.get("/", HTTP_AUTHORIZATION="Api-Key k-123"), "g")
    assert by_custom is not None and by_custom == by_auth
