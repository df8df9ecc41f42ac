"""Issue 13 for analytics: hostile input never gives a 500 or an unbounded store, with Redis up or down; the
outage path keeps the Redis path's bounds; every Redis record the feature acts on is authenticated."""

import datetime as dt

import pytest

from hotcache import analytics, metering
from hotcache import clock as hc_clock
from hotcache.backends import mongo
from tests.analytics_fixtures import _empty_fallback_buffer, hourly_docs, hourly_total  # noqa: F401


def _slots():
    return mongo.collection(analytics.SLOTS, feature="test")


@pytest.fixture(autouse=True)
def _empty_slot_registry():
    """The MongoDB stand-in lives as long as the process: each test starts without slot documents."""
    _slots().delete_many({})
    mongo.collection(analytics.HOURLY, feature="test").delete_many({})
    yield
    _slots().delete_many({})


# --- outage bounds ---------------------------------------------------------------------------------


def test_redis_down_three_thousand_paths_give_at_most_cap_plus_one_documents(redis_down, hotcache_config, clock):
    """The issue's proof: Redis down, 3,000 distinct paths in one hour, cap 500 -> at most 501 documents."""
    hotcache_config(ANALYTICS_MAX_COUNTERS_PER_HOUR=500)
    outcomes = [analytics.track("page_view", path=f"/item/{i}") for i in range(3000)]
    analytics.flush_fallback()
    assert outcomes == ["fallback"] * 3000  # folding keeps the buffer small: nothing dropped
    docs = hourly_docs()
    assert len(docs) <= 501
    assert hourly_total() == 3000
    other = [d for d in docs if d["path"] == analytics.OVERFLOW]
    assert len(other) == 1 and other[0]["count"] == 3000 - 500


def test_the_cap_holds_across_processes_and_flushes(redis_down, hotcache_config, clock):
    """Three processes (three buffers) flushing small batches of new paths of one hour share the hour's slots."""
    hotcache_config(
        ANALYTICS_MAX_COUNTERS_PER_HOUR=500, ANALYTICS_FALLBACK_BUFFER_SIZE=64, ANALYTICS_FALLBACK_FLUSH_INTERVAL=3600
    )
    buffers = [analytics._FallbackBuffer() for _ in range(3)]
    hour = hc_clock.utcnow().strftime("%Y%m%d%H")
    for i in range(1500):
        for j, buffer in enumerate(buffers):
            assert buffer.add((hour, "page_view", f"/w{j}/{i}"), 1) == "fallback"
    for buffer in buffers:
        buffer.flush()
    docs = hourly_docs()
    assert len(docs) <= 501 and hourly_total() == 4500
    assert len([d for d in docs if d["path"] != analytics.OVERFLOW]) <= 500


def test_many_event_names_during_an_outage_stay_within_cap_plus_slack_plus_one(redis_down, hotcache_config, clock):
    hotcache_config(ANALYTICS_MAX_COUNTERS_PER_HOUR=20, ANALYTICS_FALLBACK_BUFFER_SIZE=50)
    for i in range(2000):
        analytics.track(f"e{i % 300}", path=f"/p{i}")
    analytics.flush_fallback()
    docs = hourly_docs()
    assert len(docs) <= 20 + 100 + 1 and hourly_total() == 2000
    assert [d["count"] for d in docs if d["event"] == analytics.OVERFLOW]  # the global counter took the rest


def test_paths_that_already_have_a_document_need_no_new_slot(redis_down, hotcache_config, clock):
    """Flushing the same few paths over and over does not use up the hour's cap."""
    hotcache_config(ANALYTICS_MAX_COUNTERS_PER_HOUR=5)
    for _ in range(20):
        for p in range(5):
            analytics.track("signup", path=f"/p{p}")
        analytics.flush_fallback()
    docs = hourly_docs()
    assert sorted(d["path"] for d in docs) == [f"/p{p}" for p in range(5)] and hourly_total() == 100


def test_a_retried_flush_sends_the_same_folded_counters(redis_down, hotcache_config, monkeypatch, clock):
    """Slots are taken once per flush id: a flush whose bulk write failed is retried without folding again."""
    from tests.analytics_fixtures import lose_ack_of_bulk_call

    hotcache_config(ANALYTICS_MAX_COUNTERS_PER_HOUR=3)
    for i in range(10):
        analytics.track("signup", path=f"/p{i}")
    lose_ack_of_bulk_call(monkeypatch, nth=1)
    assert analytics.flush_fallback() == 0
    monkeypatch.undo()
    assert analytics.flush_fallback() == 4  # three paths and the event's (other): the same operations again
    assert hourly_total() == 10 and len(hourly_docs()) == 4


def test_the_outage_path_drops_counters_past_the_retention_like_redis_expires_them(
    redis_down, hotcache_config, clock
):
    hotcache_config(ANALYTICS_RETENTION_HOURS=48)
    with mongo.inject_failures():
        analytics.track("signup", path="/a", count=3)
        analytics.flush_fallback()  # MongoDB down as well: kept
    clock.advance(49 * 3600)
    before = metering.snapshot()["ev:analytics:dropped"]
    assert analytics.flush_fallback() == 0
    assert metering.snapshot()["ev:analytics:dropped"] - before == 3 and hourly_total() == 0
    assert not analytics._fallback.has_data()


def test_the_slot_registry_expires_after_the_retention(redis_down, clock):
    analytics.track("signup", path="/a")
    analytics.flush_fallback()
    (doc,) = _slots().find({})
    hour = hc_clock.utcnow().replace(minute=0, second=0, microsecond=0)
    assert doc["expires"] - hour == dt.timedelta(hours=168 + 2)
    assert any(i.get("expireAfterSeconds") == 0 for i in _slots().index_information().values())
