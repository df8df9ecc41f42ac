"""Redis taken away mid-test: each outage policy, never a 500, degraded decisions counted, logged once."""

import logging
import uuid

import pytest
from django.test import Client

from hotcache.backends import redis as redis_backend
from hotcache.ratelimit import Limit, evaluate
from hotcache.testing import count_redis
from tests.ratelimit.fixtures import ratelimit_middleware  # noqa: F401 - fixture

# Every test here runs through RateLimitMiddleware with fresh limiter state (tests.ratelimit.fixtures).
pytestmark = pytest.mark.usefixtures("ratelimit_middleware")


def ident():
    return uuid.uuid4().hex


def test_open_policy_admits_while_redis_is_away(redis_proxy):
    lim = Limit("o", ident(), 1, 3600, policy="open")
    assert evaluate([lim]).allowed
    redis_proxy.down()
    with count_redis() as c:
        decisions = [evaluate([lim]) for _ in range(5)]
    assert all(d.allowed and d.degraded for d in decisions)
    assert c.events["ratelimit:degraded_open"] == 5


def test_closed_policy_refuses_while_redis_is_away(redis_proxy):
    lim = Limit("c", ident(), 100, 3600, policy="closed")
    assert evaluate([lim]).allowed
    redis_proxy.down()
    with count_redis() as c:
        d = evaluate([lim])
    assert not d.allowed and d.retry_after >= 1
    assert c.events["ratelimit:degraded_closed"] == 1


def test_local_policy_limits_in_process_while_redis_is_away(redis_proxy):
    lim = Limit("l", ident(), 3, 3600, policy="local")
    assert evaluate([lim]).allowed
    redis_proxy.down()
    with count_redis() as c:
        outcomes = [evaluate([lim]).allowed for _ in range(5)]
    assert outcomes == [True, True, True, False, False]  # the local limiter starts from zero
    assert c.events["ratelimit:degraded_local"] == 5


def test_default_policy_is_local(redis_proxy, hotcache_config):
    lim = Limit("d", ident(), 2, 3600, policy="")
    redis_proxy.down()
    d = [evaluate([lim]) for _ in range(3)]
    assert [x.allowed for x in d] == [True, True, False]
    assert d[0].results[0].source == "local"


def test_mixed_policies_all_or_nothing_locally(redis_proxy):
    who = ident()
    local, closed = Limit("loc", who, 5, 3600, policy="local"), Limit("cl", who, 5, 3600, policy="closed")
    redis_proxy.down()
    assert not evaluate([local, closed]).allowed
    # the closed rule's refusals did not use up the local rule's quota
    assert [evaluate([local]).allowed for _ in range(6)] == [True] * 5 + [False]


def test_middleware_never_500_and_back_on_redis_after_recovery(redis_proxy, hotcache_config, clock, caplog):
    hotcache_config(RATELIMIT_RULES=[
        {"name": "open-rule", "rate": "100/m", "key": "ip", "policy": "open", "headers": True},
        {"name": "closed-rule", "rate": "100/m", "key": "ip", "path": "/login/", "policy": "closed"},
    ])
    c = Client()
    assert c.get("/other/", REMOTE_ADDR="192.0.2.10").status_code == 200
    redis_proxy.down()
    with caplog.at_level(logging.WARNING, logger="hotcache.ratelimit"):
        statuses = [c.get("/other/", REMOTE_ADDR="192.0.2.10").status_code for _ in range(5)]
        login = c.get("/login/", REMOTE_ADDR="192.0.2.10")
        assert statuses == [200] * 5
        assert login.status_code == 429 and int(login["Retry-After"]) >= 1
        degraded_logs = [r for r in caplog.records if "degraded" in r.getMessage()]
        assert len(degraded_logs) == 1  # once per transition, not per request
        redis_proxy.up()
        clock.advance(10)  # let the health gate probe again
        with count_redis() as counted:
            assert c.get("/other/", REMOTE_ADDR="192.0.2.10").status_code == 200
        assert counted.by_feature["ratelimit"] >= 1
        assert any("back on Redis" in r.getMessage() for r in caplog.records)


def test_timeouts_apply_the_policy_like_errors(hotcache_config, monkeypatch):
    from redis.exceptions import TimeoutError as RedisTimeout

    def slow(*args, **kwargs):
        raise RedisTimeout("Timeout reading from socket")

    lim = Limit("t", ident(), 5, 3600, policy="closed")
    monkeypatch.setattr(redis_backend.Script, "__call__", lambda self, *a, **k: slow())
    d = evaluate([lim])
    assert not d.allowed and d.degraded


def test_redis_down_from_the_start(redis_down):
    d = evaluate([Limit("x", ident(), 1, 60, policy="open")])
    assert d.allowed and d.degraded
