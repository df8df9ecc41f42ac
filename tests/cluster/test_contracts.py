"""Each feature's core contract on both Redis targets (``redis_target``: the single server and the cluster),
served by Redis: no call refused, no fallback. The full suites run on the cluster with
HOTCACHE_TEST_REDIS_TARGET=cluster (docs/design/keys-and-lua.md, "Cluster: what remains")."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from hotcache import analytics, apikeys, metering, mfa, ratelimit, workbench
from hotcache import clock as hc_clock
from hotcache.backends.health import redis_gate
from hotcache.ratelimit import Limit


@pytest.fixture(autouse=True)
def _target(redis_target):
    return redis_target


def _no_redis_errors() -> None:
    errors = {k: v for k, v in metering.snapshot().items() if k.endswith(":redis_error") and v}
    assert errors == {}
    assert redis_gate.allow()


def test_rate_limit_rules_on_one_identifier_admit_exactly_the_limit():
    ident = uuid.uuid4().hex
    rules = [Limit("burst", ident, 3, 10), Limit("sustained", ident, 5, 60)]
    assert [ratelimit.evaluate(rules).allowed for _ in range(5)] == [True, True, True, False, False]
    _no_redis_errors()


def test_an_mfa_code_verifies_once_and_a_wrong_one_never():
    user = f"u-{uuid.uuid4().hex[:8]}"
    code = mfa.issue(user)
    wrong = "0" * len(code) if code != "0" * len(code) else "1" * len(code)
    assert not mfa.verify(user, wrong).ok
    result = mfa.verify(user, code)
    assert result.ok and result.store == "redis"
    assert not mfa.verify(user, code).ok
    _no_redis_errors()


def test_an_api_key_is_counted_against_its_daily_limit():
    new = apikeys.create(f"o-{uuid.uuid4().hex[:6]}", daily_limit=2)
    assert [apikeys.check(new.raw_key).allowed for _ in range(3)] == [True, True, False]
    assert apikeys.usage(new.key_id, days=1)[0][1] == 2
    _no_redis_errors()


def test_a_workbench_session_is_saved_loaded_ended_and_persisted_once():
    sid = uuid.uuid4().hex
    v1 = workbench.save(sid, {"n": 1}, owner="o")
    v2 = workbench.save(sid, {"n": 2}, owner="o", expected_version=v1)
    loaded = workbench.load(sid)
    assert loaded.version == v2 and loaded.state == {"n": 2}
    assert workbench.end(sid)
    result = workbench.persist()
    assert result.ended >= 1
    assert workbench.load(sid) is None
    _no_redis_errors()


def test_analytics_counts_reach_the_report_and_mongodb(clock):
    event = f"signup_{uuid.uuid4().hex[:8]}"  # the session's cluster is shared with other tests
    for _ in range(3):
        analytics.track(event, path="/pricing", visitor_id="v1")
    now = hc_clock.utcnow()
    rep = analytics.report(now - dt.timedelta(hours=1), now + dt.timedelta(hours=1), event=event)
    assert rep.top_paths == [("/pricing", 3)]
    clock.advance(3600 + 301)
    synced = analytics.sync()
    assert not synced.error
    _no_redis_errors()
