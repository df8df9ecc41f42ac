"""Upgrading to the billed-cost layout (issue 17) loses nothing: the keys the previous track script wrote (hour
hashes, hour index, per-day HyperLogLogs, the day's event set and index, writers' tokens) are the keys the new
script and the sync use; only the hour's visitor marks (vm:<hour>) are new, and a missing one only makes the
next call do the per-day work once more."""

import datetime as dt

import pytest

from hotcache import analytics
from hotcache import clock as hc_clock
from hotcache.analytics import _documents
from hotcache.backends import mongo
from tests.analytics.fixtures import _empty_fallback_buffer, close_hours, hourly_total  # noqa: F401

# Tampering and upgrades are checked on the single-tag keys ({analytics:a}), on every Redis target; the
# spread layouts run the same scripts per bucket (tests/contracts/test_bucket_walks.py).
pytestmark = pytest.mark.usefixtures("single_tag_layout")

TTL = 168 * 3600


def _old_layout(raw_redis, key_prefix):
    """What the previous analytics_track.lua left for 12 signup events on /a and 3 visitors of the day."""
    now = hc_clock.time()
    hour_start = int(now // 3600 * 3600)
    day_start = int(now // 86400 * 86400)
    hour = dt.datetime.fromtimestamp(hour_start, tz=dt.UTC).strftime("%Y%m%d%H")
    day = hour[:8]
    k = f"{key_prefix}:{{analytics:a}}"
    pipe = raw_redis.pipeline()
    pipe.hset(f"{k}:h:{hour}", mapping={"signup\t/a": 12})
    pipe.expire(f"{k}:h:{hour}", TTL)
    pipe.zadd(f"{k}:hours", {hour: hour_start})
    pipe.expire(f"{k}:hours", TTL)
    pipe.pfadd(f"{k}:v:{day}:signup", "d1", "d2", "d3")
    pipe.expire(f"{k}:v:{day}:signup", TTL)
    pipe.sadd(f"{k}:ev:{day}", "signup")
    pipe.expire(f"{k}:ev:{day}", TTL)
    pipe.zadd(f"{k}:days", {day: day_start})
    pipe.expire(f"{k}:days", TTL)
    pipe.set(f"{k}:w:oldprocess", "a token of a process of the old version", ex=TTL)
    pipe.execute()
    return hour


def test_counters_and_visitors_of_the_old_layout_are_synced_with_the_new_ones(raw_redis, key_prefix, clock):
    hour = _old_layout(raw_redis, key_prefix)
    for i in range(5):
        assert analytics.track("signup", path="/a", visitor_id=f"new{i}") == "redis"
    analytics.track("signup", path="/b")
    assert raw_redis.hget(f"{key_prefix}:{{analytics:a}}:h:{hour}", "signup\t/a") == b"17"
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{analytics:*"):
        assert raw_redis.ttl(key) > 0, key  # every key keeps a TTL
    close_hours(clock)
    result = analytics.sync()
    assert not result.error and result.tampered == 0
    assert hourly_total("signup") == 12 + 5 + 1
    visitors = mongo.collection(_documents.VISITORS, feature="test").find_one({"event": "signup"})
    assert visitors["count"] == 3 + 5  # the old day's HyperLogLog, added to
