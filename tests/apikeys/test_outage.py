"""API keys: one contract on Redis and across a Redis outage (MongoDB fallback); the stores' counts combine after it."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from hotcache import apikeys
from hotcache.backends import mongo
from hotcache.exceptions import MongoUnavailable
from hotcache.testing import count_redis, mongo_down, new_process

# MongoDB-facing contracts: each test runs on the stand-in and on a real server ([standin] / [real]).
pytestmark = pytest.mark.mongo_contract


@pytest.fixture(params=["redis", "redis_down"])
def store(request):
    """Runs a test on the real Redis and again with Redis refusing connections (MongoDB fallback)."""
    if request.param == "redis_down":
        request.getfixturevalue("redis_down")
    return request.param


def test_limit_is_enforced(store):
    new = apikeys.create("alice", daily_limit=5)
    results = [apikeys.check(new.raw_key) for _ in range(8)]
    assert [r.allowed for r in results] == [True] * 5 + [False] * 3
    assert [r.used_today for r in results[:5]] == [1, 2, 3, 4, 5]
    assert results[-1].remaining == 0


def test_concurrent_checks_allow_exactly_the_limit(store):
    new = apikeys.create("alice", daily_limit=20)
    barrier = threading.Barrier(10)

    def burst(_):
        barrier.wait()
        return [apikeys.check(new.raw_key).allowed for _ in range(6)]

    with ThreadPoolExecutor(10) as pool:
        allowed = sum(a for batch in pool.map(burst, range(10)) for a in batch)
    assert allowed == 20


def test_no_limit_counts_every_use(store):
    new = apikeys.create("alice")
    assert [apikeys.check(new.raw_key).used_today for _ in range(3)] == [1, 2, 3]


def test_revoked_key_fails_on_the_next_call(store):
    new = apikeys.create("alice")
    apikeys.check(new.raw_key)
    apikeys.revoke(new.key_id)
    with pytest.raises(apikeys.InvalidKey):
        apikeys.check(new.raw_key)


def test_expired_key_fails_on_the_next_call(store, clock):
    now = dt.datetime.fromtimestamp(clock.time(), tz=dt.UTC)
    new = apikeys.create("alice", expires_at=now + dt.timedelta(seconds=10))
    apikeys.check(new.raw_key)
    clock.advance(10)
    with pytest.raises(apikeys.InvalidKey):
        apikeys.check(new.raw_key)


def test_unknown_key_is_invalid(store):
    with pytest.raises(apikeys.InvalidKey):
        apikeys.check("zzzzzzzz." + "Q" * 43)


def test_usage_history_counts_fallback_uses(store, clock):
    new = apikeys.create("alice", daily_limit=3)
    for _ in range(4):
        apikeys.check(new.raw_key)
    apikeys.sync_usage()
    assert apikeys.usage(new.key_id, days=2)[0][1] == 3
    assert apikeys.list_keys("alice")[0].used_today == 3


def test_fallback_is_one_indexed_query_plus_one_conditional_inc(redis_down):
    new = apikeys.create("alice", daily_limit=5)
    apikeys.check(new.raw_key)  # creates the day's usage document
    with count_redis() as c:
        usage = apikeys.check(new.raw_key)
    assert usage.allowed and c.mongo_ops == 2 and c.events["apikeys:fallback"] == 1


def test_both_stores_down_raises_mongo_unavailable(redis_down):
    new = apikeys.create("alice")
    with mongo_down(), pytest.raises(MongoUnavailable):
        apikeys.check(new.raw_key)


def _outage(redis_proxy, clock):
    redis_proxy.down()

    def back():
        redis_proxy.up()
        clock.advance(6)  # past the health gate's cool-down (HEALTH_COOLDOWN, default 5 s): the next call probes Redis

    return back


def test_counts_from_both_stores_combine_to_exactly_the_limit(redis_proxy, clock):
    new = apikeys.create("alice", daily_limit=10)
    allowed = sum(apikeys.check(new.raw_key).allowed for _ in range(3))  # on Redis
    apikeys.sync_usage()  # MongoDB learns Redis's 3
    back = _outage(redis_proxy, clock)
    allowed += sum(apikeys.check(new.raw_key).allowed for _ in range(9))  # on MongoDB: 7 more allowed
    assert allowed == 10
    back()
    after = [apikeys.check(new.raw_key) for _ in range(3)]  # Redis again: it adds MongoDB's 7
    assert [u.allowed for u in after] == [False] * 3 and after[0].used_today == 10
    apikeys.sync_usage()
    assert apikeys.usage(new.key_id, days=1)[0][1] == 10


def test_other_processes_learn_fallback_counts_at_the_next_sync(redis_proxy, clock):
    new = apikeys.create("alice", daily_limit=4)
    apikeys.check(new.raw_key)
    back = _outage(redis_proxy, clock)
    assert sum(apikeys.check(new.raw_key).allowed for _ in range(2)) == 2
    back()
    new_process()  # this process forgets: as if another process served the next calls
    assert apikeys.sync_usage().bases_pushed == 1
    assert [apikeys.check(new.raw_key).allowed for _ in range(3)] == [True, False, False]


def test_revocation_during_an_outage_holds_after_redis_returns(redis_proxy, clock):
    new = apikeys.create("alice")
    apikeys.check(new.raw_key)  # record cached in Redis
    back = _outage(redis_proxy, clock)
    apikeys.revoke(new.key_id)
    with pytest.raises(apikeys.InvalidKey):
        apikeys.check(new.raw_key)
    back()
    with pytest.raises(apikeys.InvalidKey):
        apikeys.check(new.raw_key)


def test_revocation_during_an_outage_reaches_other_processes_at_the_next_sync(redis_proxy, clock):
    new = apikeys.create("alice")
    apikeys.check(new.raw_key)
    back = _outage(redis_proxy, clock)
    apikeys.revoke(new.key_id)
    back()
    new_process()  # another process: it never saw the revocation fail
    apikeys.sync_usage()
    with pytest.raises(apikeys.InvalidKey):
        apikeys.check(new.raw_key)


def test_fallback_usage_documents_hold_no_raw_key(redis_down):
    new = apikeys.create("alice", daily_limit=2)
    apikeys.check(new.raw_key)
    secret = new.raw_key.split(".")[1]
    for name in (apikeys.KEYS_COLLECTION, apikeys.USAGE_COLLECTION):
        for doc in mongo.collection(name, feature="test").find({}):
            assert secret not in repr(doc)
