"""An outage copy in workbench_active of a session that another process then ends in Redis never brings the ended
session back: not the persister's outage reconcile, not a later load that misses in Redis.

How such a copy comes about, on the real Redis: process A's save of v2 reached Redis but its reply was lost, so A
wrote v2 on MongoDB as an outage copy ("fallback", the same incarnation). Process B, which owes no recovery fence,
ends the session in Redis at v2 before A calls Redis again: Redis writes its ended record, and B's ended mark is
refused by MongoDB (it marks durable copies only, and this one is an outage copy). The outage copy is then no
newer than the version Redis ended: it must stay ended, and history holds it once, as ended.
"""

from collections import Counter

import pytest

from hotcache import workbench
from hotcache.backends import mongo
from hotcache.testing import count_redis, new_process
from hotcache.workbench import _layout
from tests.workbench.test_lost_reply import arm, history, persist_all, redis_token, reopen_gate

# MongoDB-facing contracts: each test runs on the stand-in and on a real server ([standin] / [real]).
pytestmark = pytest.mark.mongo_contract

SID = "s1"


@pytest.fixture(autouse=True)
def _clean_workbench_keys(raw_redis, key_prefix):
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*"):
        raw_redis.unlink(key)
    new_process()


def active():
    return mongo.collection(workbench.ACTIVE, feature="test").find_one({"_id": SID})


def _outage_copy_then_ended_in_redis(lost_reply_proxy, raw_redis, clock):
    """A's v2 is in Redis and, as an outage copy, in workbench_active; B then ended it in Redis at v2."""
    assert workbench.save(SID, {"n": 1}, owner="alice") == 1
    workbench.flush_durable()
    arm(lost_reply_proxy, raw_redis, _layout._SAVE, "apply")
    assert workbench.save(SID, {"n": 2}, expected_version=1) == 2  # Redis ran it; A wrote it on MongoDB too
    token = redis_token(raw_redis, SID)
    copy = active()
    assert (copy["origin"], copy["version"], copy["token"]) == (_layout._FALLBACK, 2, token)
    new_process()  # B: owes no fence
    reopen_gate(clock)
    assert workbench.end(SID) is True  # in Redis, at v2
    workbench.flush_durable()  # B's ended mark: refused by the outage copy
    assert raw_redis.hlen(_layout._gone_key(SID)) == 1  # Redis's ended record
    assert redis_token(raw_redis, SID) is None
    copy = active()
    assert (copy["origin"], copy.get("ended"), copy["version"]) == (_layout._FALLBACK, None, 2)
    return token


def _stays_ended(raw_redis, clock):
    assert workbench.load(SID) is None
    assert redis_token(raw_redis, SID) is None
    with pytest.raises(workbench.Conflict):
        workbench.save(SID, {"n": 3}, expected_version=2)  # nothing to continue from
    persist_all(clock)
    records = history()
    assert Counter(r["session_id"] for r in records) == {SID: 1}
    assert (records[0]["version"], records[0]["reason"], records[0]["state"]) == (2, "ended", '{"n":2}')
    assert active() is None
    assert workbench.load(SID) is None and redis_token(raw_redis, SID) is None


def test_the_persisters_outage_reconcile_does_not_bring_back_a_session_ended_in_redis(
    lost_reply_proxy, raw_redis, clock
):
    token = _outage_copy_then_ended_in_redis(lost_reply_proxy, raw_redis, clock)
    new_process()  # the persister: another process again
    result = workbench.persist()
    assert result.errors == [] and result.reconciled == 1 and result.ended == 1
    assert redis_token(raw_redis, SID) is None  # not put back
    copy = active()  # the outage copy became the incarnation's ended mark (or left with the session's copies)
    assert copy is None or (copy.get("ended"), copy["token"], copy["version"]) == (True, token, 2)
    _stays_ended(raw_redis, clock)


def test_a_load_that_misses_in_redis_does_not_bring_back_a_session_ended_in_redis(lost_reply_proxy, raw_redis, clock):
    token = _outage_copy_then_ended_in_redis(lost_reply_proxy, raw_redis, clock)
    new_process()  # C: never saw the session
    with count_redis() as c:
        assert workbench.load(SID) is None
    assert c.mongo_ops == 2  # the copy read, then turned into the ended mark
    copy = active()
    assert (copy.get("ended"), copy["origin"], copy["token"], copy["version"]) == (True, _layout._REDIS, token, 2)
    _stays_ended(raw_redis, clock)
