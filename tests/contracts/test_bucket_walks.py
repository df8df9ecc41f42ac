"""The jobs walk every bucket of a spread feature in a bounded number of round trips (issue 18).

The same work on the single server with the single-tag layout (KEY_BUCKETS=1, the default there) and spread over
64 buckets (the default on a cluster): each job's totals are the same, and its round trips do not grow with the
bucket count (one pipeline per step over every bucket). The figures (round trips, billed commands) are printed
(``-s``) and recorded in docs/operations/redis-cluster.md.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from hotcache import analytics, apikeys, workbench
from hotcache import clock as hc_clock
from hotcache.analytics._sync import sync as sync_analytics
from hotcache.testing import count_redis
from tests.analytics.fixtures import close_hours
from tests.support.redis_cluster import on_cluster


@pytest.fixture
def own_prefix(hotcache_config, raw_redis, key_prefix):
    """A key prefix of this test's own, so each job sees only this test's keys; deleted afterwards."""
    prefix = f"{key_prefix}.w{uuid.uuid4().hex[:6]}"
    hotcache_config(KEY_PREFIX=prefix, METER_FLUSH_EVERY=10**9)  # no meter flush inside a measured job
    yield prefix
    for k in list(raw_redis.scan_iter(match=f"{prefix}:*", count=1000)):
        raw_redis.delete(k)


def _measure(name, buckets, run):
    with count_redis() as c:
        out = run()
    print(f"{name} KEY_BUCKETS={buckets}: {c.round_trips} round trips, {c.billed} billed, {c.mongo_ops} mongo ops")
    return out, c


# Round trips a job may add when spread: none per bucket; a step may be split at most once more (the NOSCRIPT
# retry of a pipeline of scripts when one script is new to the server, as a single call's EVAL is).
_SLACK = 3
# A pipeline costs one round trip per node it reaches: on the cluster target (3 masters) a step costs up to 3.
_NODES = 3 if on_cluster() else 1


@pytest.mark.parametrize("buckets", [1, 64])
def test_persisting_walks_every_bucket_in_bounded_round_trips(buckets, own_prefix, hotcache_config, clock):
    hotcache_config(KEY_BUCKETS=buckets, WORKBENCH_DURABLE_SAVES=False)
    sids = [f"s{i}" for i in range(60)]
    for sid in sids:
        workbench.save(sid, {"n": 1}, owner="o")
    for sid in sids[:30]:
        assert workbench.end(sid)
    workbench.persist()  # warm: scripts cached, indexes created
    for sid in sids[30:45]:
        assert workbench.end(sid)
    result, c = _measure("persist_workbench", buckets, workbench.persist)
    assert (result.ended, result.idle, result.errors) == (15, 0, [])
    # claim, read, ack (one pipeline each), the stale-claims count, the fence read of the recovery step
    assert c.round_trips <= (5 + _SLACK) * _NODES
    counts, c = _measure("workbench.counts", buckets, workbench.counts)
    assert counts.active == 15 and c.round_trips <= _NODES


@pytest.mark.parametrize("buckets", [1, 64])
def test_the_analytics_sync_walks_every_bucket_exactly_once(buckets, own_prefix, hotcache_config, clock):
    hotcache_config(KEY_BUCKETS=buckets, ANALYTICS_BATCH_SECONDS=0)
    events = {f"event{i}": i + 1 for i in range(20)}
    for name, n in events.items():
        analytics.track(name, path="/a", count=n, visitor_id="v1")
    close_hours(clock)
    result, c = _measure("sync_analytics", buckets, sync_analytics)
    assert not result.error and result.events == sum(events.values())
    assert c.round_trips <= (9 + _SLACK) * _NODES
    again = sync_analytics()
    assert again.events == 0  # exactly once: nothing moved twice
    now = hc_clock.utcnow()
    rep, c = _measure(
        "analytics.report", buckets, lambda: analytics.report(now - dt.timedelta(hours=3), now, event=None)
    )
    assert sum(n for _, n in rep.top_events) == sum(events.values())
    assert c.round_trips <= 4 * _NODES  # as documented for report(): the walk adds none


@pytest.mark.parametrize("buckets", [1, 64])
def test_the_usage_sync_reads_every_bucket_of_the_touched_index(buckets, own_prefix, hotcache_config):
    hotcache_config(KEY_BUCKETS=buckets)
    made = [apikeys.create(f"o{i}") for i in range(30)]
    for new in made:
        assert apikeys.check(new.raw_key).allowed
        assert apikeys.check(new.raw_key).allowed
    result, c = _measure("sync_apikey_usage", buckets, apikeys.sync_usage)
    assert result.written == len(made)
    assert c.round_trips <= (2 + _SLACK) * _NODES
    assert all(apikeys.usage(new.key_id, days=1)[0][1] == 2 for new in made)


# --- upgrade: keys of the single-tag layout are still found after KEY_BUCKETS changes -------------------


def test_workbench_sessions_of_the_single_tag_layout_are_adopted_or_persisted(own_prefix, hotcache_config, clock):
    hotcache_config(KEY_BUCKETS=1, WORKBENCH_DURABLE_SAVES=False)
    workbench.save("live", {"n": 1}, owner="o")
    workbench.save("ends", {"n": 1}, owner="o")
    workbench.save("ended", {"n": 1}, owner="o")
    assert workbench.end("ended")
    hotcache_config(KEY_BUCKETS=64)
    session = workbench.load("live")  # moved into its bucket on the miss there
    assert (session.state, session.version) == ({"n": 1}, 1)
    assert workbench.save("live", {"n": 2}, expected_version=1) == 2
    assert workbench.end("ends")  # ended from the single-tag layout, via its bucket
    result = workbench.persist()  # walks the single-tag layout too
    assert (result.ended, result.errors) == (2, [])
    assert sorted(e.session_id for e in workbench.history()) == ["ended", "ends"]
    assert workbench.load("live").state == {"n": 2}
    assert workbench.counts().active == 1


def test_analytics_of_the_single_tag_layout_are_synced_exactly_once(own_prefix, hotcache_config, clock):
    hotcache_config(KEY_BUCKETS=1, ANALYTICS_BATCH_SECONDS=0)
    analytics.track("old", path="/a", count=3)
    hotcache_config(KEY_BUCKETS=64)
    analytics.track("old", path="/a", count=4)
    analytics.track("new", path="/a", count=5)
    close_hours(clock)
    result = sync_analytics()
    assert not result.error and result.events == 12
    assert sync_analytics().events == 0


def test_the_touched_index_of_the_single_tag_layout_is_still_synced(own_prefix, hotcache_config):
    hotcache_config(KEY_BUCKETS=1)
    old = apikeys.create("old")
    assert apikeys.check(old.raw_key).allowed
    hotcache_config(KEY_BUCKETS=64)
    new = apikeys.create("new")
    assert apikeys.check(new.raw_key).allowed
    assert apikeys.sync_usage().written == 2
