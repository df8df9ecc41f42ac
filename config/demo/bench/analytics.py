"""Analytics arms: the cost of tracking an event, and of syncing counters to MongoDB.

Sync arms seed one past hour per operation (one pipelined HSET + ZADD, counted in the figures) and sync
it. The in-process MongoDB stand-in (mongomock) scans its whole collection for every upsert, so a
1,000-counter bulk takes seconds there; the 1,000-counter arm therefore replaces Collection.bulk with a
stub that counts each call as one MongoDB round trip and sends nothing. Its mongo/op is exact; its latency
is the Redis and client side only. The 100-counter arm writes to the stand-in for real.
"""

from __future__ import annotations

import json
import time
from typing import Any
from unittest import mock

from django.test import RequestFactory

from config.demo.bench.runner import Arm
from hotcache import analytics, metering
from hotcache.analytics import _keys
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend

__all__ = ["arms"]

_BASE = (int(time.time()) // 3600 - 24 * 10) * 3600  # ten days ago: closed hours the sync may claim


def _seed(i: int, counters: int) -> None:
    """Put ``counters`` counters into the live hash of a past hour, as tracking would have."""
    start = _BASE - i * 3600
    label = time.strftime("%Y%m%d%H", time.gmtime(start))
    fields = {f"page_view\t/p{j}": 1 for j in range(counters)}
    hours_key = _keys.index_keys().hours

    def write(r: Any) -> None:
        pipe = r.pipeline(transaction=False)
        pipe.hset(_keys.hour_key(label), mapping=fields)
        pipe.expire(_keys.hour_key(label), 3600 * 24 * 30)
        pipe.zadd(hours_key, {label: start})
        pipe.execute()

    redis_backend.call("analytics", write)


def _clear() -> None:
    """Start the sync group without the track group's counters and visitor days (each would add a write)."""

    def drop(r: Any) -> None:
        pattern = _keys.key("x").rsplit(":", 1)[0] + ":*"  # every analytics key of this prefix
        found = list(r.scan_iter(match=pattern, count=1000))
        for j in range(0, len(found), 500):
            r.unlink(*found[j : j + 500])

    redis_backend.call("bench", drop)


def _stub_bulk(self: mongo.Collection, ops: Any, *, ordered: bool = False) -> mongo.BulkResult:
    metering.mongo_op(self.feature)  # one bulk call = one MongoDB round trip
    return mongo.BulkResult(upserted=len(ops))


def _sync_stubbed(i: int) -> None:
    _seed(i, 1000)
    with mock.patch.object(mongo.Collection, "bulk", _stub_bulk):
        result = analytics.sync()
    assert result.counters == 1000, result


def _sync_mongomock(i: int) -> None:
    _seed(100_000 + i, 100)
    result = analytics.sync()
    assert result.counters == 100, result
    mongo.collection(analytics.HOURLY, feature="bench").delete_many({})  # keep the stand-in small


def _before(coll: mongo.Collection, i: int) -> None:
    # The seed's "before" path: one MongoDB write per event.
    coll.update_one({"_id": f"h|page_view|/p{i % 50}"}, {"$inc": {"count": 1}}, upsert=True)


def arms() -> dict[str, list[Arm]]:
    before = mongo.collection("analytics_before", feature="analytics")
    factory = RequestFactory()
    body = json.dumps({"event": "page_view", "path": "/pricing", "visitor_id": "v1"})

    def beacon(i: int) -> None:
        response = analytics.track_view(factory.post("/hotcache/analytics/track", body, "application/json"))
        assert response.status_code == 204

    return {
        "analytics: track one event": [
            Arm(
                "hotcache analytics.track() (one Lua script)",
                lambda i: analytics.track("page_view", path=f"/p{i % 50}", visitor_id=str(i % 1000)),
            ),
            Arm("POST /hotcache/analytics/track (view, no middleware)", beacon),
            Arm("before: one MongoDB $inc upsert per event (stand-in)", lambda i: _before(before, i)),
        ],
        "analytics: sync (seed one closed hour + sync it, per op)": [
            Arm("sync 1,000 counters, MongoDB bulk stubbed (counted)", _sync_stubbed, setup=_clear),
            Arm("sync 100 counters into the MongoDB stand-in", _sync_mongomock),
        ],
    }
