"""API keys: a check whose reply was lost is counted exactly once (real Redis, a proxy that loses replies).

The proxy relays hotcache's connections to the real Redis; when armed, the next check script (EVALSHA of
apikey_check) is either applied by Redis and its reply withheld ("apply": Redis stopped between doing and
answering) or dropped before Redis sees it ("drop"). Either way the client only sees a closed connection
after sending: RedisUnavailable(maybe_applied=True).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from hotcache import apikeys
from hotcache import clock as hotcache_clock
from hotcache.apikeys import _hot, _records
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.exceptions import MongoUnavailable
from hotcache.testing import count_redis, mongo_down

# MongoDB-facing contracts: each test runs on the stand-in and on a real server ([standin] / [real]).
pytestmark = pytest.mark.mongo_contract

COOLDOWN = 6  # past HEALTH_COOLDOWN (5 s): the gate lets the next call probe Redis
CHECK_SCRIPT = redis_backend.Script("apikey_check")
RESOLVE_SCRIPT = redis_backend.Script("apikey_resolve")


class Losing:
    """``arm(mode, times)``: the next ``times`` check scripts lose their reply ("apply": Redis runs them;
    "drop": they never reach Redis). Wraps the conftest's ``lost_reply_proxy``: one proxy for the single
    server, one in front of every node on the cluster (HOTCACHE_TEST_REDIS_TARGET=cluster)."""

    def __init__(self, proxy: Any) -> None:
        self._proxy = proxy

    def arm(self, mode: str, times: int = 1) -> None:
        self._proxy.arm(CHECK_SCRIPT.sha.encode(), *([mode] * times if mode else []))

    @property
    def faults(self) -> int:
        return int(self._proxy.faults)


@pytest.fixture
def losing(lost_reply_proxy: Any) -> Losing:
    return Losing(lost_reply_proxy)


def _usage_doc(key_id):
    return mongo.collection(apikeys.USAGE_COLLECTION, feature="test").find_one({"key_id": key_id}) or {}


def _counter(raw_redis, raw_key, clock):
    tag = _records.tag_of(_records.digest_of(raw_key))
    return int(raw_redis.get(_records.count_key(tag, hotcache_clock.utcnow().date())) or 0)


def test_applied_check_whose_reply_was_lost_is_counted_once(losing, clock, raw_redis):
    new = apikeys.create("alice", daily_limit=5)
    assert apikeys.check(new.raw_key).used_today == 1
    losing.arm("apply")
    lost = apikeys.check(new.raw_key)  # Redis counted it; the answer comes from MongoDB
    assert lost.allowed and losing.faults == 1
    assert _counter(raw_redis, new.raw_key, clock) == 2
    clock.advance(COOLDOWN)
    after = apikeys.check(new.raw_key)  # resolves the doubt (applied: nothing to add), then counts
    assert after.allowed and after.used_today == 3
    apikeys.sync_usage()
    assert apikeys.usage(new.key_id, days=1)[0][1] == 3  # 3 allowed calls, not 4
    assert _usage_doc(new.key_id).get("doubt", 0) == 0  # the MongoDB reservation was taken back


def test_check_dropped_before_redis_is_counted_at_resolution(losing, clock, raw_redis):
    new = apikeys.create("alice", daily_limit=5)
    apikeys.check(new.raw_key)
    losing.arm("drop")
    assert apikeys.check(new.raw_key).allowed
    assert _counter(raw_redis, new.raw_key, clock) == 1  # not applied, and not counted on MongoDB either
    assert _usage_doc(new.key_id).get("fallback", 0) == 0
    clock.advance(COOLDOWN)
    assert apikeys.check(new.raw_key).used_today == 3  # the doubt counted first, then this call
    apikeys.sync_usage()
    assert apikeys.usage(new.key_id, days=1)[0][1] == 3
    assert _usage_doc(new.key_id).get("doubt", 0) == 0


@pytest.mark.parametrize("mode", ["apply", "drop"])
def test_unlimited_key_counts_a_lost_check_exactly_once(losing, clock, mode):
    new = apikeys.create("alice")
    apikeys.check(new.raw_key)
    losing.arm(mode)
    assert apikeys.check(new.raw_key).allowed
    clock.advance(COOLDOWN)
    assert apikeys.check(new.raw_key).used_today == 3
    apikeys.sync_usage()
    assert apikeys.usage(new.key_id, days=1)[0][1] == 3


def test_refused_request_that_redis_counted_is_taken_back(losing, clock, raw_redis):
    new = apikeys.create("alice", daily_limit=5)
    apikeys.check(new.raw_key)
    losing.arm("apply")
    with mongo_down(), pytest.raises(MongoUnavailable):  # both stores failing: 503 for the client
        apikeys.check(new.raw_key)
    assert _counter(raw_redis, new.raw_key, clock) == 2
    clock.advance(COOLDOWN)
    assert apikeys.check(new.raw_key).used_today == 2  # the refused use was taken back before counting
    apikeys.sync_usage()
    assert apikeys.usage(new.key_id, days=1)[0][1] == 2


def test_over_limit_answer_from_mongodb_takes_back_redis_count(losing, clock, raw_redis):
    new = apikeys.create("alice", daily_limit=2)
    apikeys.check(new.raw_key)
    apikeys.sync_usage()
    # MongoDB already knows 2 (as if another process counted one there): the lost check is refused.
    mongo.collection(apikeys.USAGE_COLLECTION, feature="test").update_one(
        {"key_id": new.key_id}, {"$inc": {"fallback": 1}}
    )
    losing.arm("apply")
    assert not apikeys.check(new.raw_key).allowed
    clock.advance(COOLDOWN)
    assert _counter(raw_redis, new.raw_key, clock) == 2  # the refused call counted on Redis, for now
    apikeys.check(new.raw_key)  # resolves: takes it back, then counts this call
    assert _counter(raw_redis, new.raw_key, clock) == 2  # 1 + this call, not 3


def test_use_taken_back_after_a_sync_copied_it_is_taken_back_from_the_history(losing, clock, raw_redis, key_prefix):
    """A refused request that Redis counted is taken back (apikey_resolve.lua) after sync_usage() copied the
    higher count: usage() follows it at once and MongoDB's history at the next sync, even with Redis emptied."""
    new, other = apikeys.create("alice", daily_limit=5), apikeys.create("bob")
    apikeys.check(new.raw_key)
    losing.arm("apply")
    with mongo_down(), pytest.raises(MongoUnavailable):  # both stores failing: 503 for the client
        apikeys.check(new.raw_key)
    clock.advance(COOLDOWN)
    apikeys.sync_usage()
    assert _counter(raw_redis, new.raw_key, clock) == 2  # the refused call, counted on Redis and copied
    apikeys.check(other.raw_key)  # another key's check settles the doubt first: the refused use is taken back
    assert _counter(raw_redis, new.raw_key, clock) == 1
    assert apikeys.usage(new.key_id, days=1)[0][1] == 1
    apikeys.sync_usage()
    tag = _records.tag_of(_records.digest_of(new.raw_key))
    for k in raw_redis.scan_iter(match=f"{key_prefix}:{{apikeys:{tag}}}:*"):
        raw_redis.delete(k)  # Redis loses the counters: the history alone answers
    assert apikeys.usage(new.key_id, days=1)[0][1] == 1  # the one allowed call
    assert apikeys.list_keys("alice")[0].used_today == 1


def test_lost_check_arriving_after_its_resolution_is_not_counted(raw_redis, clock):
    new = apikeys.create("alice", daily_limit=5)
    apikeys.check(new.raw_key)
    tag, today = _records.tag_of(_records.digest_of(new.raw_key)), hotcache_clock.utcnow().date()
    writer, seq = "late:1", 10**6
    args = [writer, str(seq), "1", "3600", str(int(clock.time())), "3600"]
    keys_ = [
        _records.count_key(tag, today),
        _records.writer_key(tag, writer),
        _records.undo_key(tag, today),
        _records.base_key(tag, today),
        _records.use_key(tag, today),
    ]
    resolved = redis_backend.call("t", lambda r: RESOLVE_SCRIPT(r, keys_, args))
    assert resolved[0] == b"counted"
    # Re-running the resolution (its own reply lost) changes nothing.
    assert redis_backend.call("t", lambda r: RESOLVE_SCRIPT(r, keys_, args))[0] == b"applied"
    # The original check script, delayed in the network, arrives now: refused as stale, not counted twice.
    reply = _hot.run_check(tag, today, hotcache_clock.utcnow(), fill="", writer=writer, seq=seq)
    assert reply[0] == "stale"
    assert _counter(raw_redis, new.raw_key, clock) == 2


def test_warm_check_is_one_round_trip_again_after_a_doubt(losing, clock):
    new = apikeys.create("alice", daily_limit=10)
    apikeys.check(new.raw_key)
    losing.arm("apply")
    apikeys.check(new.raw_key)
    clock.advance(COOLDOWN)
    apikeys.check(new.raw_key)  # resolution happens here
    with count_redis() as c:
        usage = apikeys.check(new.raw_key)
    assert usage.allowed and (c.commands, c.round_trips, c.mongo_ops) == (1, 1, 0)


def test_concurrent_checks_across_lost_replies_allow_exactly_the_limit(losing, clock):
    """8 threads x 6 calls against a limit of 20: 2 calls each on Redis, then every in-flight check loses its
    reply (the gate opens, the rest fall back to MongoDB), then Redis again. Reservations on MongoDB make the
    doubts count for the limit at once, so nothing beyond the limit is allowed, and the totals are exact."""
    threads, limit = 8, 20
    new = apikeys.create("alice", daily_limit=limit)
    phase = threading.Barrier(threads + 1)

    def client(_):
        allowed = sum(apikeys.check(new.raw_key).allowed for _ in range(2))
        phase.wait()  # main: sync, then arm the proxy
        phase.wait()
        allowed += sum(apikeys.check(new.raw_key).allowed for _ in range(2))
        phase.wait()  # main: past the cool-down
        phase.wait()
        allowed += sum(apikeys.check(new.raw_key).allowed for _ in range(2))
        return allowed

    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(client, range(threads))
        phase.wait()
        apikeys.sync_usage()  # MongoDB knows Redis's 16: the fallback's own tolerance is 0 here
        losing.arm("apply", threads)
        phase.wait()
        phase.wait()
        losing.arm("", 0)
        clock.advance(COOLDOWN)
        phase.wait()
        allowed = sum(results)
    assert losing.faults >= 1
    assert allowed == limit
    apikeys.check(new.raw_key)  # any remaining reconciliation of this process
    apikeys.sync_usage()
    assert apikeys.usage(new.key_id, days=1)[0][1] == allowed
