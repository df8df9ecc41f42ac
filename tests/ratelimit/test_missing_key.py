"""Requests whose key gives no identifier: on_missing_key skip | shared | deny for rules,
RATELIMIT_ON_MISSING_KEY for the decorator API, the once-per-process warning, W010, and 'unix' proxies."""

import json
import logging
import uuid

import pytest
from django.test import Client, RequestFactory

from hotcache import ratelimit as rl
from hotcache.checks import check_ratelimit
from hotcache.ratelimit import Ratelimited, get_usage, is_ratelimited, ratelimit
from hotcache.testing import count_redis
from tests.ratelimit.fixtures import async_client, ratelimit_middleware  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("ratelimit_middleware")

rf = RequestFactory()
NO_ADDRESS = ["", "unix:", "not an ip", "fe80::1%eth0"]  # what servers on a Unix socket (or broken ones) report


@pytest.fixture
def rules(hotcache_config):
    def apply(*items, **extra):
        hotcache_config(RATELIMIT_RULES=list(items), **extra)

    return apply


def name():
    return f"r-{uuid.uuid4().hex[:12]}"


def ip():
    n = uuid.uuid4().int
    return f"198.18.{n % 250}.{(n >> 8) % 250 + 1}"


def ratelimit_keys(raw_redis, key_prefix):
    """The rate-limit keys under the suite's prefix. Tests assert that none was added (a key of an earlier test
    may expire meanwhile, so they never compare for equality)."""
    return set(raw_redis.scan_iter(match=f"{key_prefix}:{{ratelimit:*", count=1000))


# -- middleware rules -------------------------------------------------------------------------------


def test_ip_rule_defaults_to_one_shared_bucket_for_requests_without_an_address(rules):
    rules({"name": name(), "rate": "2/m", "key": "ip"})
    c = Client()
    assert [c.get("/other/", REMOTE_ADDR=remote).status_code for remote in NO_ADDRESS] == [200, 200, 429, 429]
    assert c.get("/other/", REMOTE_ADDR=ip()).status_code == 200  # clients with an address keep their own buckets


def test_user_or_ip_rule_shares_the_bucket_for_anonymous_requests_without_an_address(rules):
    rules({"name": name(), "rate": "1/m", "key": "user_or_ip"})
    c = Client()
    assert [c.get("/other/", REMOTE_ADDR="").status_code for _ in range(2)] == [200, 429]


def test_ip_rule_skip_does_not_limit_and_writes_nothing(rules, raw_redis, key_prefix):
    rules({"name": name(), "rate": "1/m", "key": "ip", "on_missing_key": "skip"})
    c = Client()
    before = ratelimit_keys(raw_redis, key_prefix)
    with count_redis() as counted:
        assert [c.get("/other/", REMOTE_ADDR="").status_code for _ in range(3)] == [200, 200, 200]
    assert counted.round_trips == 0 and not ratelimit_keys(raw_redis, key_prefix) - before


def test_ip_rule_deny_refuses_without_a_redis_call(rules, raw_redis, key_prefix):
    rule = name()
    rules({"name": rule, "rate": "100/m", "key": "ip", "on_missing_key": "deny", "headers": True})
    before = ratelimit_keys(raw_redis, key_prefix)
    with count_redis() as counted:
        resp = Client().get("/other/", REMOTE_ADDR="")
    assert resp.status_code == 429 and resp["Retry-After"] == "60"
    assert json.loads(resp.content)["rule"] == rule
    assert resp["RateLimit"] == f'"{rule}";r=0;t=60'
    assert counted.round_trips == 0 and not ratelimit_keys(raw_redis, key_prefix) - before
    assert counted.events["ratelimit:denied_missing_key"] == 1 and counted.events[f"ratelimit:missing_key:{rule}"] == 1
    assert Client().get("/other/", REMOTE_ADDR=ip()).status_code == 200


def test_deny_is_all_or_nothing_with_the_other_rules(rules):
    counted_rule = name()
    rules({"name": counted_rule, "rate": "2/m", "key": "header:x-team"},
          {"name": name(), "rate": "100/m", "key": "ip", "on_missing_key": "deny"})
    c, team = Client(), uuid.uuid4().hex
    assert [c.get("/other/", REMOTE_ADDR="", HTTP_X_TEAM=team).status_code for _ in range(3)] == [429] * 3
    # the refusals did not use up the team's quota
    assert [c.get("/other/", REMOTE_ADDR=ip(), HTTP_X_TEAM=team).status_code for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize(
    ("key", "request_kwargs"),
    [("user", {}), ("api_key", {}), ("header:x-team", {}), ("get:team", {}),
     ("header:x-team", {"HTTP_X_TEAM": ""}), ("api_key", {"HTTP_X_API_KEY": "\x00"})],
)
def test_other_keys_skip_by_default_and_honour_shared_and_deny(rules, key, request_kwargs):
    skip, shared, deny = name(), name(), name()
    rules({"name": skip, "rate": "1/m", "key": key, "path": "/login/"},
          {"name": shared, "rate": "1/m", "key": key, "path": "/other/", "on_missing_key": "shared"},
          {"name": deny, "rate": "1/m", "key": key, "path": "/api/", "on_missing_key": "deny"})
    c = Client()
    assert [c.get("/login/", REMOTE_ADDR=ip(), **request_kwargs).status_code for _ in range(2)] == [200, 200]
    assert [c.get("/other/", REMOTE_ADDR=ip(), **request_kwargs).status_code for _ in range(2)] == [200, 429]
    assert c.get("/api/items/", REMOTE_ADDR=ip(), **request_kwargs).status_code == 429


def test_shared_and_deny_with_redis_down(rules, redis_down):
    rules({"name": name(), "rate": "2/m", "key": "ip", "path": "/other/"},
          {"name": name(), "rate": "2/m", "key": "ip", "path": "/login/", "on_missing_key": "deny"},
          {"name": name(), "rate": "1/m", "key": "ip", "path": "/api/", "on_missing_key": "skip"})
    c = Client()
    assert [c.get("/other/", REMOTE_ADDR="").status_code for _ in range(3)] == [200, 200, 429]  # local policy
    assert c.get("/login/", REMOTE_ADDR="").status_code == 429
    assert [c.get("/api/items/", REMOTE_ADDR="").status_code for _ in range(2)] == [200, 200]


def test_asgi_request_without_an_address(rules):
    rules({"name": name(), "rate": "1/m", "key": "ip", "on_missing_key": "deny"})
    from asgiref.sync import async_to_sync

    async def run():
        return (await async_client(None).get("/async/")).status_code  # an ASGI server on a Unix socket

    assert async_to_sync(run)() == 429


def test_unix_peer_trusted_limits_each_client_by_its_forwarded_address(rules):
    rules({"name": name(), "rate": "1/m", "key": "ip", "on_missing_key": "deny"}, TRUSTED_PROXIES=["unix"])
    c, a, b = Client(), ip(), ip()
    assert [c.get("/other/", REMOTE_ADDR="", HTTP_X_FORWARDED_FOR=a).status_code for _ in range(2)] == [200, 429]
    assert c.get("/other/", REMOTE_ADDR="", HTTP_X_FORWARDED_FOR=f"{b}, {a}").status_code == 429  # left is ignored
    assert c.get("/other/", REMOTE_ADDR="", HTTP_X_FORWARDED_FOR=b).status_code == 200
    assert c.get("/other/", REMOTE_ADDR="").status_code == 429  # the proxy named no client: deny


# -- the warning at run time ---------------------------------------------------------------------------


def test_no_usable_address_is_logged_once_per_process(rules, caplog):
    rules({"name": name(), "rate": "100/m", "key": "ip"}, {"name": name(), "rate": "100/m", "key": "user_or_ip"})
    c = Client()
    with caplog.at_level(logging.WARNING, logger="hotcache.ratelimit"):
        for remote in NO_ADDRESS:
            assert c.get("/other/", REMOTE_ADDR=remote).status_code == 200
        assert c.get("/other/", REMOTE_ADDR=ip()).status_code == 200
    warnings = [r.getMessage() for r in caplog.records if "no usable client address" in r.getMessage()]
    assert len(warnings) == 1
    assert "REMOTE_ADDR=''" in warnings[0] and "on_missing_key" in warnings[0] and "'unix'" in warnings[0]


def test_the_warning_quotes_a_hostile_remote_addr_safely(rules, caplog):
    rules({"name": name(), "rate": "100/m", "key": "ip"})
    with caplog.at_level(logging.WARNING, logger="hotcache.ratelimit"):
        Client().get("/other/", REMOTE_ADDR="\x00\n" + "x" * 10_000)
    (message,) = [r.getMessage() for r in caplog.records if "no usable client address" in r.getMessage()]
    assert "\n" not in message.split("REMOTE_ADDR=", 1)[1].split(")", 1)[0] and len(message) < 600


def test_requests_with_an_address_do_not_warn(rules, caplog):
    rules({"name": name(), "rate": "100/m", "key": "ip"})
    with caplog.at_level(logging.WARNING, logger="hotcache.ratelimit"):
        Client().get("/other/", REMOTE_ADDR=ip())
    assert not [r for r in caplog.records if "no usable client address" in r.getMessage()]


# -- the decorator API -----------------------------------------------------------------------------------


def anonymous(remote=""):
    from django.contrib.auth.models import AnonymousUser

    request = rf.get("/", REMOTE_ADDR=remote)
    request.user = AnonymousUser()
    return request


def test_decorator_default_is_one_shared_bucket_as_django_ratelimit():
    group = name()
    outcomes = [is_ratelimited(anonymous(r), group=group, key="ip", rate="2/m", increment=True) for r in NO_ADDRESS]
    assert outcomes == [False, False, True, True]
    assert not is_ratelimited(anonymous(ip()), group=group, key="ip", rate="2/m", increment=True)


def test_decorator_skip_leaves_the_view_unlimited(hotcache_config, raw_redis, key_prefix):
    hotcache_config(RATELIMIT_ON_MISSING_KEY="skip")
    view = ratelimit(key="user", rate="1/m")(lambda request: "ok")
    before = ratelimit_keys(raw_redis, key_prefix)
    with count_redis() as counted:
        assert [view(anonymous(ip())) for _ in range(3)] == ["ok"] * 3
        assert get_usage(anonymous(), group=name(), key="ip", rate="1/m") is None
    assert counted.round_trips == 0 and not ratelimit_keys(raw_redis, key_prefix) - before
    group = "tests.ratelimit.test_missing_key.test_decorator_skip_leaves_the_view_unlimited.<locals>.<lambda>"
    assert counted.events[f"ratelimit:missing_key:{group}"] == 3


def test_decorator_deny_raises_ratelimited_without_a_redis_call(hotcache_config):
    hotcache_config(RATELIMIT_ON_MISSING_KEY="deny")
    view = ratelimit(key="header:x-team", rate="5/h")(lambda request: "ok")
    with count_redis() as counted, pytest.raises(Ratelimited) as info:
        view(anonymous(ip()))
    assert info.value.retry_after == 3600 and counted.round_trips == 0
    usage = get_usage(anonymous(), group=name(), key="ip", rate="5/m")
    assert usage["should_limit"] and usage["time_left"] == 60 and usage["decision"].results[0].source == "missing_key"
    assert view(rf.get("/", HTTP_X_TEAM="t1", REMOTE_ADDR=ip())) == "ok"


def test_decorator_deny_with_redis_down(hotcache_config, redis_down):
    hotcache_config(RATELIMIT_ON_MISSING_KEY="deny")
    assert is_ratelimited(anonymous(), group=name(), key="user", rate="5/m", increment=True)
    assert not is_ratelimited(anonymous(ip()), group=name(), key="ip", rate="5/m", increment=True)


def test_invalid_decorator_setting_falls_back_to_shared(hotcache_config):
    hotcache_config(RATELIMIT_ON_MISSING_KEY=["deny"])
    group = name()
    assert [is_ratelimited(anonymous(), group=group, key="ip", rate="1/m", increment=True)
            for _ in range(2)] == [False, True]


# -- checks ----------------------------------------------------------------------------------------------------


def found(hotcache_config, **values):
    hotcache_config(**values)
    return [(m.id, m.level, m.msg) for m in check_ratelimit()]


@pytest.mark.parametrize("key", ["ip", "user_or_ip"])
def test_w010_names_an_address_rule_that_skips(hotcache_config, key):
    (only,) = found(hotcache_config, RATELIMIT_RULES=[
        {"name": "ok-default", "rate": "1/m", "key": key},
        {"name": "ok-deny", "rate": "1/m", "key": key, "on_missing_key": "deny"},
        {"name": "login-burst", "rate": "1/m", "key": key, "on_missing_key": "skip"},
        {"name": "per-user", "rate": "1/m", "key": "user", "on_missing_key": "skip"},
    ])
    check_id, level, message = only
    assert check_id == "hotcache.W010" and level == logging.WARNING
    assert "HOTCACHE['RATELIMIT_RULES'][2]" in message and "'login-burst'" in message and "Unix socket" in message


@pytest.mark.parametrize("bad", ["never", "", "SKIP", ["deny"], {"x": 1}, 1, True, "\x00"])
def test_e014_names_the_rule_and_the_bad_on_missing_key(hotcache_config, bad):
    ((check_id, _, message),) = found(hotcache_config, RATELIMIT_RULES=[
        {"name": "r", "rate": "1/m", "key": "ip", "on_missing_key": bad}])
    assert check_id == "hotcache.E014" and "'r'" in message and "on_missing_key" in message
    assert repr(bad)[:20] in message


def test_a_rule_with_a_bad_on_missing_key_is_skipped_not_a_500(rules):
    rules({"name": "bad", "rate": "1/m", "key": "ip", "on_missing_key": "sometimes"},
          {"name": "good", "rate": "1/m", "key": "ip"})
    c, addr = Client(), ip()
    assert [c.get("/other/", REMOTE_ADDR=addr).status_code for _ in range(2)] == [200, 429]


def test_e014_for_the_decorator_setting_and_unix_is_a_valid_proxy(hotcache_config):
    assert found(hotcache_config, TRUSTED_PROXIES=["unix", "UNIX ", "10.0.0.0/8"]) == []
    ((check_id, _, message),) = found(hotcache_config, RATELIMIT_ON_MISSING_KEY="block")
    assert check_id == "hotcache.E014" and "RATELIMIT_ON_MISSING_KEY" in message


def test_rl_reset_local_state_rearms_the_warning(rules, caplog):
    rules({"name": name(), "rate": "100/m", "key": "ip"})
    with caplog.at_level(logging.WARNING, logger="hotcache.ratelimit"):
        Client().get("/other/", REMOTE_ADDR="")
        rl.reset_local_state()
        Client().get("/other/", REMOTE_ADDR="")
    assert len([r for r in caplog.records if "no usable client address" in r.getMessage()]) == 2
