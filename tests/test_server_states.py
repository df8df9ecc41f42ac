"""A Redis that runs out is an outage, on real servers: memory full (``maxmemory`` with ``noeviction``), a read-only
replica, and the provider's quota error (a RESP proxy answering it). For each: the health gate opens within the
failure threshold, every feature takes its fallback, nothing is lost, and the gate closes when the condition
clears. Time is the frozen clock: the cool-downs pass without sleeping."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from hotcache import analytics, apikeys, metering, mfa, workbench
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import CLOSED, OPEN, redis_gate
from hotcache.exceptions import RedisUnavailable
from hotcache.ratelimit import Limit, evaluate
from hotcache.testing import new_process
from tests.support.resp_proxies import UPSTASH_DAILY_QUOTA

THRESHOLD = 3
UPSTASH_MONTHLY_QUOTA = b"ERR max requests limit exceeded."


@dataclass
class Condition:
    name: str
    on: Callable[[], None]
    off: Callable[[], None]
    cooldown: float  # seconds the gate stays open for it
    opens_within: int  # failed calls that open the gate
    condition: str  # what the gate's snapshot names
    warm: bool = True  # the server can serve before the condition starts


@pytest.fixture(params=["oom", "readonly", "quota"])
def condition(request, hotcache_config) -> Condition:
    hotcache_config(HEALTH_FAILURE_THRESHOLD=THRESHOLD, HEALTH_COOLDOWN=5.0, HEALTH_QUOTA_COOLDOWN=60.0)
    return _condition(request, request.param)


@pytest.fixture(params=["oom", "readonly"])
def refusing_server(request, hotcache_config) -> Condition:
    """The server's own refusals (a quota error opens the gate at once, whatever the threshold)."""
    hotcache_config(HEALTH_FAILURE_THRESHOLD=10_000, HEALTH_COOLDOWN=5.0)
    return _condition(request, request.param)


def _condition(request, name: str) -> Condition:
    if name == "oom":
        raw = request.getfixturevalue("oom_redis").client()
        return Condition(
            "oom",
            on=lambda: raw.config_set("maxmemory", 1),  # any used memory is over: every write refused (OOM)
            off=lambda: raw.config_set("maxmemory", 0),
            cooldown=5.0,
            opens_within=THRESHOLD,
            condition="OOM",
        )
    if name == "readonly":
        raw = request.getfixturevalue("replica_redis").client()
        return Condition(
            "readonly",
            on=lambda: None,  # a replica from the start
            off=lambda: raw.replicaof("NO", "ONE"),  # promoted
            cooldown=5.0,
            opens_within=THRESHOLD,
            condition="READONLY",
            warm=False,
        )
    proxy = request.getfixturevalue("quota_proxy")
    proxy.error = UPSTASH_MONTHLY_QUOTA

    def on() -> None:
        proxy.quota_on = True

    def off() -> None:
        proxy.quota_on = False

    return Condition("quota", on=on, off=off, cooldown=60.0, opens_within=1, condition="monthly request quota")


def test_the_gate_opens_every_feature_falls_back_nothing_is_lost_and_the_gate_closes(condition, clock):
    _scenario(condition, clock, gate_opens=True)


def test_every_feature_survives_the_error_itself_mid_operation(refusing_server, clock):
    """With a threshold the condition never reaches, every feature call meets the server's refusal itself
    (a script refused at its first write, an operation of several round trips refused half-way): each takes
    its fallback, and nothing is lost."""
    _scenario(refusing_server, clock, gate_opens=False)


def _scenario(condition: Condition, clock, *, gate_opens: bool) -> None:
    key = apikeys.create("alice", daily_limit=1000)
    rule = [Limit("burst", "client-1", limit=1000, window=3600)]
    uses = tracked = 0
    if condition.warm:  # healthy first: everything on Redis
        assert not evaluate(rule).degraded
        assert analytics.track("view", path="/a") == "redis"
        tracked += 1
        assert workbench.save("wb1", {"n": "before"}) == 1
        assert apikeys.check(key.raw_key).used_today == 1
        uses += 1
        apikeys.sync_usage()  # MongoDB learns Redis's count (what the periodic sync does)
        early = mfa.issue("carol")
        assert mfa.verify("carol", early).store == "redis"

    condition.on()
    if gate_opens:
        calls = 0
        while redis_gate.state == CLOSED:
            calls += 1
            assert calls <= condition.opens_within, (
                f"{condition.name}: the gate stayed closed after {calls - 1} failures"
            )
            decision = evaluate(rule)
            assert decision.allowed and decision.degraded == "redis_unavailable"
        assert calls == condition.opens_within
        snap = redis_gate.snapshot()
        assert snap.state == OPEN and snap.opens == 1 and condition.condition in snap.condition

    # Every feature takes its fallback while the gate is open.
    assert evaluate(rule).degraded == "redis_unavailable"
    for _ in range(5):
        assert analytics.track("view", path="/a") == "fallback"
        tracked += 1
    for _ in range(4):
        uses += 1
        assert apikeys.check(key.raw_key).used_today == uses
    during = workbench.save("wb1", {"n": "during"})
    assert workbench.load("wb1").state == {"n": "during"}
    code = mfa.issue("alice")
    verified = mfa.verify("alice", code)
    assert verified.store == "mongodb"
    # Also on a full Redis whose gate has not opened yet: mfa_issue.lua is refused at its first write, as
    # mfa_verify.lua is, so both take MongoDB and the code verifies at once.
    assert verified.ok
    pending = mfa.issue("bob")  # issued during the outage, verified after it
    assert redis_gate.snapshot().opens == (1 if gate_opens else 0)

    # The condition clears; after the cool-down the next call probes and closes the gate.
    condition.off()
    if gate_opens:
        clock.advance(condition.cooldown - 1)
        assert evaluate(rule).degraded == "redis_unavailable"  # still cooling down: not even tried
        clock.advance(1)
    assert not evaluate(rule).degraded
    assert redis_gate.state == CLOSED and redis_gate.snapshot().recoveries == (1 if gate_opens else 0)

    # Back on Redis, and nothing written during the outage is lost.
    assert analytics.track("view", path="/a") == "redis"
    tracked += 1
    uses += 1
    assert apikeys.check(key.raw_key).used_today == uses
    assert workbench.load("wb1").state == {"n": "during"}
    assert workbench.save("wb1", {"n": "after"}, expected_version=during) == during + 1
    assert mfa.verify("bob", pending)
    analytics.flush_fallback()
    now = dt.datetime.fromtimestamp(clock.time(), tz=dt.UTC)
    counted = analytics.report(now - dt.timedelta(days=1), now + dt.timedelta(days=1), event="view")
    assert sum(n for _, n in counted.daily) == tracked
    apikeys.sync_usage()
    assert apikeys.usage(key.key_id, days=1)[0][1] == uses
    assert metering.snapshot()["ev:apikeys:tampered"] == 0  # a refused write is an outage, not a malformed record
    assert redis_gate.snapshot().opens == (1 if gate_opens else 0)  # it stayed closed


@pytest.mark.parametrize("before", ["no record", "a live code", "a key of another type"])
def test_on_a_full_redis_an_mfa_code_is_issued_where_it_can_be_verified(oom_redis, hotcache_config, clock, before):
    """The gate still closed (a high threshold): mfa_issue.lua is refused whole, whatever the user's key holds,
    so the code lives on MongoDB, where a verify refused by the same full Redis looks; it verifies at once,
    exactly once (issue 17: a DEL first used to let the issue run whole on Redis, out of verify's reach)."""
    from hotcache.conf import hotcache_settings
    from hotcache.mfa._hot import _keys

    hotcache_config(HEALTH_FAILURE_THRESHOLD=10_000)
    raw = oom_redis.client()
    key = _keys("dora", "login").code
    if before == "a live code":
        mfa.issue("dora")
        clock.advance(hotcache_settings.MFA_RESEND_COOLDOWN + 1)
    elif before == "a key of another type":
        raw.rpush(key, "x")
    held = raw.dump(key)
    raw.config_set("maxmemory", 1)
    code = mfa.issue("dora")
    assert raw.dump(key) == held  # nothing written on Redis
    first = mfa.verify("dora", code)
    assert first.ok and first.store == "mongodb"
    assert not mfa.verify("dora", code).ok  # consumed
    assert redis_gate.snapshot().opens == 0


def test_a_write_refused_for_memory_is_never_half_applied(oom_redis, clock):
    """Redis checks memory at a script's first write: refused there, the script wrote nothing; past it, it runs
    to the end. So a feature's script is either applied whole or refused whole, and its fallback is safe."""
    raw = oom_redis.client()
    raw.config_set("maxmemory", 1)
    script = "redis.call('SET', KEYS[1], 'a'); redis.call('SET', KEYS[2], 'b'); return 1"
    with pytest.raises(RedisUnavailable) as refused:
        redis_backend.call("test", lambda r: r.eval(script, 2, "k1", "k2"))
    assert not refused.value.maybe_applied
    assert raw.exists("k1", "k2") == 0
    raw.config_set("maxmemory", 0)


def test_a_daily_quota_keeps_the_gate_open_until_the_next_utc_day_and_is_logged_once(quota_proxy, caplog, settings):
    from hotcache.testing import frozen_clock

    settings.HOTCACHE = {**settings.HOTCACHE, "HEALTH_COOLDOWN": 5.0}
    day = 86_400
    start = (1_800_000_000 // day + 1) * day - 3600  # 23:00 UTC
    with frozen_clock(start) as clock, caplog.at_level(logging.ERROR, logger="hotcache.health"):
        assert redis_backend.call("test", lambda r: r.ping())
        quota_proxy.error = UPSTASH_DAILY_QUOTA
        quota_proxy.quota_on = True
        for _ in range(5):
            with pytest.raises(RedisUnavailable):
                redis_backend.call("test", lambda r: r.ping())
        assert quota_proxy.refused == 1  # the first refusal opened the gate: nothing more was sent
        clock.advance(3599)
        with pytest.raises(RedisUnavailable):
            redis_backend.call("test", lambda r: r.ping())
        assert quota_proxy.refused == 1
        clock.advance(1)  # 00:00 UTC: one probe, still refused
        with pytest.raises(RedisUnavailable):
            redis_backend.call("test", lambda r: r.ping())
        assert quota_proxy.refused == 2
        quota_proxy.quota_on = False  # the plan was upgraded
        clock.advance(day)
        assert redis_backend.call("test", lambda r: r.ping())
    assert redis_gate.state == CLOSED
    messages = [r.getMessage() for r in caplog.records if r.name == "hotcache.health"]
    assert len([m for m in messages if "daily request quota ran out" in m]) == 1, messages


def test_a_request_too_large_for_the_provider_does_not_open_the_gate(quota_proxy, clock):
    quota_proxy.error = b"ERR max request size exceeded"
    quota_proxy.quota_on = True
    for _ in range(10):
        with pytest.raises(RedisUnavailable):
            redis_backend.call("test", lambda r: r.ping())
    assert redis_gate.state == CLOSED and quota_proxy.refused == 10


def test_a_quota_met_while_connecting_opens_the_gate_at_once(quota_proxy, clock):
    """A new connection's own setup (SELECT, CLIENT SETNAME) is refused too: still the quota, not a broken link."""
    quota_proxy.quota_on = True
    for _ in range(3):
        with pytest.raises(RedisUnavailable):
            redis_backend.call("test", lambda r: r.ping())
    snap = redis_gate.snapshot()
    assert (snap.state, snap.opens, snap.condition) == (OPEN, 1, "the daily request quota")
    assert quota_proxy.refused == 1


def test_on_a_full_redis_a_user_invalidation_still_lands_so_no_process_reads_the_stale_user(oom_redis, clock, db):
    """Reads still succeed on a full Redis: an invalidation refused there would leave every other process
    serving the cached user (a changed password, a deactivated account) until the entry's TTL. The
    invalidation script deletes first, which memory never refuses, so it runs whole."""
    from django.contrib.auth import get_user_model

    from hotcache import users

    user = get_user_model().objects.create_user("alice", password="pw", first_name="Old")
    assert users.get_cached_user(user.pk).first_name == "Old"  # loaded and cached
    oom_redis.client().config_set("maxmemory", 1)
    user.first_name = "New"
    user.save()  # the signal invalidates the cached entry
    new_process()  # another process: it never saw the change
    assert users.get_cached_user(user.pk).first_name == "New"


def test_on_a_full_redis_a_revoked_api_key_is_refused_by_every_process(oom_redis, clock):
    key = apikeys.create("alice")
    apikeys.check(key.raw_key)  # cached in Redis
    oom_redis.client().config_set("maxmemory", 1)
    apikeys.revoke(key.key_id)  # the tombstone is refused for memory: deferred
    new_process()
    with pytest.raises(apikeys.InvalidKey):  # the check's own write is refused: MongoDB answers
        apikeys.check(key.raw_key)


def test_on_a_full_redis_no_process_loads_a_workbench_state_older_than_a_refused_save(oom_redis, clock):
    """A save refused for memory goes to MongoDB; a load in another process must not serve Redis's older copy."""
    assert workbench.save("s1", {"n": 1}) == 1
    oom_redis.client().config_set("maxmemory", 1)
    assert workbench.save("s1", {"n": 2}) == 2  # refused by Redis: on MongoDB
    new_process()  # another process: it does not owe the recovery fence
    assert workbench.load("s1").state == {"n": 2}  # the load is refused for memory too: the durable copy


def _another_process_with_its_gate_closed() -> None:
    new_process()
    redis_gate.reset()


def test_on_a_full_redis_a_save_made_while_the_gate_is_open_is_not_shadowed_either(oom_redis, clock, hotcache_config):
    """Other features' refusals opened this process's gate, so its save goes to MongoDB without meeting a
    refusal of its own; another process (gate closed) still reads Redis. The save's deletion of the session's
    field t, sent past the gate, sends that process to the durable copy too; once memory is freed, the
    session is compared with MongoDB before Redis serves or changes it: no stale read, no lost update."""
    hotcache_config(HEALTH_FAILURE_THRESHOLD=1)
    assert workbench.save("s1", {"n": 1}) == 1
    oom_redis.client().config_set("maxmemory", 1)
    assert evaluate([Limit("burst", "c", limit=10, window=60)]).degraded  # refused for memory: the gate opens
    assert redis_gate.state == OPEN
    assert workbench.save("s1", {"n": 2}) == 2  # the gate is open: on MongoDB
    _another_process_with_its_gate_closed()
    assert workbench.load("s1").state == {"n": 2}
    oom_redis.client().config_set("maxmemory", 0)
    _another_process_with_its_gate_closed()
    with pytest.raises(workbench.Conflict):
        workbench.save("s1", {"n": "from version 1"}, expected_version=1)
    loaded = workbench.load("s1")
    assert (loaded.state, loaded.version) == ({"n": 2}, 2)
    assert workbench.save("s1", {"n": 3}, expected_version=2) == 3


def test_on_a_full_redis_no_process_loads_a_workbench_session_whose_end_was_refused(oom_redis, clock):
    assert workbench.save("s1", {"n": 1}) == 1
    assert workbench.save("s2", {"n": 1}) == 1
    oom_redis.client().config_set("maxmemory", 1)
    assert workbench.save("s2", {"n": 2}) == 2  # refused: this process now owes the recovery fence
    assert workbench.end("s1") is True  # the end script raises the fence first: refused, ended on MongoDB
    new_process()
    assert workbench.load("s1") is None
    oom_redis.client().config_set("maxmemory", 0)
    new_process()
    assert workbench.load("s1") is None  # the tombstone drops Redis's copy
    assert workbench.load("s2").state == {"n": 2}
    workbench.persist()
    assert [(e.session_id, e.state) for e in workbench.history() if e.session_id == "s1"] == [("s1", {"n": 1})]
