"""A save in one process and an end() in another within one durable interval never bring the ended session back
(issue 16): processes, each with its own clients, on the real Redis and a real MongoDB-wire server.

Process A saved the session and has not written its durable copy yet; process B ends it in Redis. A's copy may
land before or after B's ended mark, or B may die before its writer runs; a later load that misses in Redis (in
any process) must find no session, and the session reaches history exactly once. The steps are ordered by a
barrier and each writer is driven by an explicit flush (the clock is frozen and the interval is 60 s, so no
writer runs by itself): no sleeps.
"""

from __future__ import annotations

from collections import Counter

import pytest

from hotcache import workbench
from hotcache.testing import count_redis, new_process
from hotcache.workbench._durable import writer
from tests.support.processes import race

pytestmark = [pytest.mark.django_db(databases=[]), pytest.mark.timeout(300)]

SAVER, ENDER, LOADER = 0, 1, 2
SID = "raced"


@pytest.fixture(autouse=True)
def _clean(raw_redis, key_prefix, clock, hotcache_config):
    hotcache_config(WORKBENCH_DURABLE_INTERVAL=60)
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*"):
        raw_redis.unlink(key)
    new_process()
    yield
    writer.clear()
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*"):
        raw_redis.unlink(key)


def _steps(index, barrier, order):
    """One process's part; every process passes the same barriers, so step k of each runs after step k-1 of all."""
    seen = {}
    # 1. A saves v2 (its copy pending in A: MongoDB still holds v1).
    if index == SAVER:
        assert workbench.save(SID, {"n": 2}, expected_version=1) == 2 and len(writer) == 1
    barrier.wait()
    # 2. B ends it in Redis: 0 MongoDB operations on the request path, its ended mark pending in B.
    if index == ENDER:
        with count_redis() as c:
            assert workbench.end(SID) is True
        seen["end_mongo_ops"] = c.mongo_ops
        if order == "mark-first":
            workbench.flush_durable()
        elif order == "ender-killed":
            writer.clear()  # what a SIGKILL does to the pending mark
    barrier.wait()
    # 3. A writes its copy of v2: after the mark (refused by it), or before it.
    if index == SAVER:
        assert workbench.flush_durable() == 1
    barrier.wait()
    # 4. C, which never saw the session, loads it: a Redis miss; the recovery check must not bring it back.
    if index == LOADER:
        seen["loaded"] = workbench.load(SID)
        seen["versioned_save"] = _conflict_or_version(lambda: workbench.save(SID, {"n": 3}, expected_version=2))
    barrier.wait()
    # 5. B's writer runs (if it lives): its mark lands whatever A wrote.
    if index == ENDER and order == "copy-first":
        assert workbench.flush_durable() == 1
    barrier.wait()
    # 6. Every process, A included, finds no session.
    seen["after"] = workbench.load(SID)
    return seen


def _conflict_or_version(call):
    try:
        return call()
    except workbench.Conflict as exc:
        return f"conflict {exc.current}"


@pytest.mark.parametrize("order", ["mark-first", "copy-first", "ender-killed"])
def test_a_save_and_an_end_in_two_processes_within_one_interval_never_resurrect_the_session(real_mongo, order):
    assert workbench.save(SID, {"n": 1}, owner="team") == 1
    workbench.flush_durable()
    active = real_mongo.db()[workbench.ACTIVE]
    assert active.find_one({"_id": SID})["version"] == 1

    results = race(3, _steps, order)

    assert results[ENDER]["end_mongo_ops"] == 0
    assert results[LOADER]["loaded"] is None
    assert results[LOADER]["versioned_save"] == "conflict 0"  # nothing to continue from either
    assert [r["after"] for r in results] == [None, None, None]
    doc = active.find_one({"_id": SID})
    # A's copy of v2 is an ended mark now (refused by B's mark, marked by C's check, or marked by B's mark).
    assert (doc["ended"], doc["version"], doc["token"]) == (True, 2, doc["token"])
    new_process()
    assert workbench.load(SID) is None

    result = workbench.persist()
    assert (result.ended, result.idle, result.errors) == (1, 0, [])
    history = list(real_mongo.db()[workbench.HISTORY].find({"session_id": SID}))
    assert [(h["version"], h["reason"], h["state"]) for h in history] == [(2, "ended", '{"n":2}')]
    assert active.find_one({"_id": SID}) is None
    assert workbench.load(SID) is None and workbench.persist().persisted == 0
    assert Counter(h["session_id"] for h in real_mongo.db()[workbench.HISTORY].find({})) == Counter({SID: 1})


CREATOR = 2


def _reuse_steps(index, barrier, order):
    """A saved the session and has not written its copy; B ends it; C creates a new session under the same id
    and writes its copy; only then does A's copy of the OLD session land (and B's mark, if B flushes late)."""
    # 1. A saves v2 of the old session (its copy pending in A).
    if index == SAVER:
        assert workbench.save(SID, {"old": 2}, expected_version=1) == 2 and len(writer) == 1
    barrier.wait()
    # 2. B ends it in Redis; its ended mark lands now or after everything else.
    if index == ENDER:
        assert workbench.end(SID) is True
        if order == "mark-first":
            workbench.flush_durable()
    barrier.wait()
    # 3. C creates a new session under the id, and its copy lands.
    if index == CREATOR:
        assert workbench.save(SID, {"new": 1}, owner="carol") == 1
        assert workbench.flush_durable() == 1
    barrier.wait()
    # 4. A's late copy of the old session's v2 (a higher version than the new session's v1).
    if index == SAVER:
        assert workbench.flush_durable() == 1
    barrier.wait()
    # 5. B's mark, if it was late.
    if index == ENDER and order == "mark-late":
        assert workbench.flush_durable() == 1
    barrier.wait()
    return workbench.load(SID)


@pytest.mark.parametrize("order", ["mark-first", "mark-late"])
def test_a_late_copy_of_the_ended_session_never_replaces_the_copy_of_the_one_created_again(
    real_mongo, raw_redis, redis_proxy, order
):
    assert workbench.save(SID, {"n": 1}, owner="team") == 1
    workbench.flush_durable()
    active = real_mongo.db()[workbench.ACTIVE]

    loaded = race(3, _reuse_steps, order)

    assert [(s.state, s.owner) for s in loaded] == [({"new": 1}, "carol")] * 3
    doc = active.find_one({"_id": SID})
    assert (doc["state"], doc["owner"], doc["version"], doc.get("ended")) == ('{"new":1}', "carol", 1, None)
    # During a Redis outage the copy serves the new session, not the ended one.
    new_process()
    redis_proxy.down()
    during = workbench.load(SID)
    assert (during.state, during.owner) == ({"new": 1}, "carol")
    redis_proxy.up()
