"""Helpers shared by the analytics test modules."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from hotcache import analytics, metering
from hotcache.backends import mongo
from hotcache.testing import new_process
from tests.support.lost_reply import LostReplyProxy  # noqa: F401 - shared by the analytics tests
from tests.support.redis_cluster import raw_test_client

GRACE = 300


def _drop_analytics_keys():
    client = raw_test_client()  # the cluster too (HOTCACHE_TEST_REDIS_TARGET=cluster)
    try:
        prefix = os.environ["HOTCACHE_TEST_PREFIX"]
        found = list(client.scan_iter(match=f"{prefix}:{{analytics:*", count=1000))
        for i in range(0, len(found), 500):
            client.unlink(*found[i : i + 500])
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _empty_fallback_buffer():
    """Each test starts with no analytics keys in this run's Redis prefix, an empty outage buffer, no doubts."""
    _drop_analytics_keys()
    new_process()  # the outage buffer, doubts and the writers' last tokens (whose keys were just deleted)
    yield
    new_process()
    _drop_future_meter_keys()


def _drop_future_meter_keys():
    """Tests here move the frozen clock by days; meter counts flushed meanwhile land in other days' meter
    hashes. Drop those (this run's prefix only) so they do not show up as extra days in other tests."""
    metering.meter.reset()
    today = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    client = raw_test_client()  # the cluster too (HOTCACHE_TEST_REDIS_TARGET=cluster)
    try:
        prefix = os.environ["HOTCACHE_TEST_PREFIX"]
        for key in client.scan_iter(match=f"{prefix}:{{meter:usage}}:*", count=1000):
            if not key.decode().endswith(today):
                client.unlink(key)
    finally:
        client.close()


def hourly_total(event=None):
    """Sum of MongoDB analytics_hourly counts (optionally for one event)."""
    query = {} if event is None else {"event": event}
    return sum(d["count"] for d in mongo.collection(analytics.HOURLY, feature="test").find(query))


def hourly_docs():
    return mongo.collection(analytics.HOURLY, feature="test").find({})


def close_hours(clock, hours=1):
    """Move the frozen clock past the end of the current hour plus the sync grace."""
    clock.advance(hours * 3600 + GRACE + 1)


def analytics_keys(raw_redis, key_prefix):
    return sorted(k.decode() for k in raw_redis.scan_iter(match=f"{key_prefix}:{{analytics:*", count=1000))


def lose_ack_of_bulk_call(monkeypatch, nth):
    """MongoDB applies the ``nth`` bulk write but its acknowledgement never arrives (MongoUnavailable)."""
    from hotcache.exceptions import MongoUnavailable

    real_bulk = mongo.Collection.bulk
    calls = []

    def bulk_then_lose_ack(self, ops, ordered=False):
        result = real_bulk(self, ops, ordered=ordered)
        calls.append(1)
        if len(calls) == nth:
            raise MongoUnavailable("acknowledgement lost after the write")
        return result

    monkeypatch.setattr(mongo.Collection, "bulk", bulk_then_lose_ack)
