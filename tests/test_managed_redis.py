"""The managed-Redis profile: the provider's URL requirements and what shares its bill (system checks), what
``hotcache_check`` measures (connect, TLS handshake, round trip, eviction policy), and default timeouts that fit a
TLS Redis in another region: proven on a real TLS redis-server behind a proxy adding 25 ms each way."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from io import StringIO

import pytest
from django.core.management import call_command

from hotcache.backends import redis_profile
from hotcache.backends.health import CLOSED, OPEN, redis_gate
from hotcache.checks import check_managed_redis
from hotcache.ratelimit import Limit, evaluate
from tests.support.redis_servers import RedisServer, tls_files
from tests.support.resp_proxies import DelayProxy

UPSTASH = "eu1-brave-owl-12345.upstash.io"


def ids():
    return sorted(m.id for m in check_managed_redis())


def point_at(settings, location, **options):
    default = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": location}
    if options:
        default["OPTIONS"] = {"CONNECTION_POOL_KWARGS": options}
    settings.CACHES = {**settings.CACHES, "default": default}


# --- system checks ---------------------------------------------------------------------------------


def test_the_test_settings_pass():
    assert ids() == []


def test_upstash_over_plain_redis_is_an_error_naming_the_fix(settings):
    point_at(settings, f"redis://default:secret@{UPSTASH}:6379/0")
    [message] = check_managed_redis()
    assert message.id == "hotcache.E100" and "REDIS_ALIAS" in message.msg and "rediss://" in message.hint


@pytest.mark.parametrize("location", [f"rediss://default:pw@{UPSTASH}:6379/3", f"rediss://{UPSTASH}:6379/0?db=2"])
def test_upstash_with_another_database_is_an_error(settings, location):
    point_at(settings, location)
    assert ids() == ["hotcache.E101"]


def test_upstash_database_from_the_pool_options(settings):
    point_at(settings, f"rediss://{UPSTASH}:6379", db=1)
    assert ids() == ["hotcache.E101"]


def test_upstash_with_tls_and_database_0_passes(settings):
    point_at(settings, [f"rediss://default:pw@{UPSTASH}:6379", f"rediss://default:pw@{UPSTASH}:6379/0"])
    assert ids() == []


def test_other_hosts_may_use_any_database_and_plain_redis(settings):
    point_at(settings, "redis://redis.internal:6379/5")
    assert ids() == []


def test_a_celery_broker_on_hotcaches_redis_with_a_budget_set_is_warned_with_its_idle_cost(settings, hotcache_config):
    point_at(settings, f"rediss://default:pw@{UPSTASH}:6379/0")
    settings.CELERY_BROKER_URL = f"rediss://default:pw@{UPSTASH}:6379/0"
    assert ids() == []  # no budget set: nothing to compare against
    hotcache_config(REDIS_DAILY_COMMAND_BUDGET=10_000)
    [message] = check_managed_redis()
    assert message.id == "hotcache.W100"
    assert "REDIS_DAILY_COMMAND_BUDGET" in message.msg and "140,000" in message.msg
    settings.CELERY_BROKER_URL = "redis://celery-broker.internal:6379/0"
    assert ids() == []


# --- hotcache_check --------------------------------------------------------------------------------


def check_report(**options):
    out = StringIO()
    call_command("hotcache_check", "--json", stdout=out, **options)
    return json.loads(out.getvalue())["redis"]


@pytest.mark.parametrize(("policy", "ok"), [("noeviction", True), ("allkeys-lru", False), ("volatile-lru", False)])
def test_hotcache_check_reports_the_eviction_policy(settings, policy, ok):
    server = RedisServer("--maxmemory-policy", policy)
    try:
        point_at(settings, server.url)
        eviction = check_report()["eviction"]
    finally:
        server.stop()
    assert eviction["maxmemory_policy"] == policy and eviction["ok"] is ok
    if not ok:
        assert "noeviction" in eviction["advice"] and "exactly-once" in eviction["advice"]


def test_the_fit_rule():
    fits = redis_profile._verdict(connect_ms=10.0, tls_ms=60.0, setup_ms=200.0, rtts=[50.0, 55.0])
    assert fits.socket_timeout_fits and fits.connect_timeout_fits and not fits.advice  # test settings: 2 s
    assert redis_profile.TIMEOUT_MULTIPLE * 60.0 <= 2000


def test_the_fit_rule_names_the_setting_and_the_value_to_use(hotcache_config):
    hotcache_config(REDIS_SOCKET_TIMEOUT=0.05, REDIS_CONNECT_TIMEOUT=0.05)
    verdict = redis_profile._verdict(connect_ms=20.0, tls_ms=60.0, setup_ms=200.0, rtts=[50.0, 55.0])
    assert not verdict.socket_timeout_fits and not verdict.connect_timeout_fits
    assert "REDIS_SOCKET_TIMEOUT" in verdict.advice and "0.240 s" in verdict.advice
    assert "REDIS_CONNECT_TIMEOUT" in verdict.advice and "0.080 s" in verdict.advice


# --- a TLS Redis in another region -----------------------------------------------------------------


@pytest.fixture
def distant_tls_redis(settings, tmp_path):
    """A real TLS redis-server (--tls-port, a throwaway self-signed certificate) behind a proxy that delays
    every chunk by 25 ms each way; hotcache uses the default timeouts (the test settings' 2 s removed)."""
    files = tls_files(tmp_path)
    server = RedisServer(tls=files)
    proxy = DelayProxy(server.port, delay=0.025)
    point_at(settings, f"rediss://127.0.0.1:{proxy.port}/0", ssl_ca_certs=str(files.cert))
    settings.HOTCACHE = {
        k: v for k, v in settings.HOTCACHE.items() if k not in ("REDIS_SOCKET_TIMEOUT", "REDIS_CONNECT_TIMEOUT")
    }
    yield proxy
    proxy.close()
    server.stop()


def test_a_thousand_calls_over_tls_50_ms_away_open_the_gate_zero_times_with_the_default_timeouts(distant_tls_redis):
    rules = [Limit("burst", "client-1", limit=10**6, window=3600)]

    def calls(_: int) -> list[bool]:
        return [evaluate(rules).degraded is None for _ in range(125)]

    with ThreadPoolExecutor(8) as pool:  # 8 connections, each with its own TLS handshake through the delay
        served = [ok for batch in pool.map(calls, range(8)) for ok in batch]
    assert len(served) == 1000
    snap = redis_gate.snapshot()
    assert (snap.opens, snap.consecutive_failures, snap.state) == (0, 0, CLOSED)
    assert all(served)


def test_the_old_50_ms_timeouts_would_open_the_gate_there(distant_tls_redis, hotcache_config, clock):
    """The control: the delay is real, so timeouts fitted to loopback time out on every call."""
    hotcache_config(REDIS_SOCKET_TIMEOUT=0.05, REDIS_CONNECT_TIMEOUT=0.05)
    rules = [Limit("burst", "client-1", limit=10**6, window=3600)]
    assert [evaluate(rules).degraded for _ in range(3)] == ["redis_unavailable"] * 3
    assert redis_gate.state == OPEN


def test_hotcache_check_times_the_tls_handshake_and_round_trip_and_says_the_default_timeouts_fit(distant_tls_redis):
    timing = check_report()["timing"]
    # Lower bounds only: the proxy adds 25 ms each way, so no round trip can take less than 50 ms.
    assert timing["rtt_ms_median"] >= 50 and timing["tls_handshake_ms"] >= 50 and timing["connect_ms"] is not None
    assert timing["socket_timeout_s"] == 0.5 and timing["connect_timeout_s"] == 0.5
    assert timing["socket_timeout_fits"] and timing["connect_timeout_fits"] and timing["advice"] == ""
