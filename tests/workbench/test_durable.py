"""Durable saves (WORKBENCH_DURABLE_SAVES): a session saved on Redis stays loadable from MongoDB during a later
Redis outage, and the newest version wins when Redis returns (real Redis + the MongoDB stand-in)."""

import functools
from collections import Counter

import pytest

from hotcache import workbench
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.checks import check_workbench
from hotcache.conf import hotcache_settings
from hotcache.testing import count_redis, mongo_down, new_process
from hotcache.workbench import _durable, _envelope, _layout, _recover
from tests.support.concurrency import increment_concurrently
from tests.support.redis_cluster import warm_every_node

# MongoDB-facing contracts: each test runs on the stand-in and on a real server ([standin] / [real]).
pytestmark = pytest.mark.mongo_contract


@pytest.fixture(autouse=True)
def _copies_on_the_request_path(hotcache_config):
    """These tests pin what each durable copy does (the version-guarded upsert the background writer also
    sends, one per session): with WORKBENCH_DURABLE_INTERVAL=0 each save's copy is written before it returns.
    The writer itself (coalescing, bulk, exit, outage) is tested in test_durable_writer.py."""
    hotcache_config(WORKBENCH_DURABLE_INTERVAL=0)


@pytest.fixture(autouse=True)
def _clean_workbench_keys(raw_redis, key_prefix):
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*"):
        raw_redis.unlink(key)
    new_process()  # and without envelopes this process remembers from an earlier test


def active(session_id):
    return mongo.collection(workbench.ACTIVE, feature="test").find_one({"_id": session_id})


def history_ids():
    return Counter(d["session_id"] for d in mongo.collection(workbench.HISTORY, feature="test").find({}))


def back(redis_proxy, clock):
    redis_proxy.up()
    clock.advance(float(hotcache_settings.HEALTH_COOLDOWN) + 1)


def test_a_redis_save_is_copied_to_workbench_active_in_one_operation():
    workbench.save("warm", {})
    warm_every_node()  # on a cluster "s1" may live on another master than "warm"
    with count_redis() as c:
        workbench.save("s1", {"n": 1}, owner="alice")
        workbench.save("s1", {"n": 2})
    assert c.mongo_ops == 2 and c.round_trips == 2
    doc = active("s1")
    assert (doc["version"], doc["owner"], doc["state"], doc["origin"]) == (2, "alice", '{"n":2}', "redis")


def test_loads_cost_no_mongodb_operation_while_redis_is_healthy():
    workbench.save("s1", {"n": 1})
    workbench.load("s1")
    with count_redis() as c:
        assert workbench.load("s1").version == 1
    assert c.round_trips == 1 and c.mongo_ops == 0


def test_redis_taken_away_between_a_save_and_a_load_returns_the_saved_state(redis_proxy):
    workbench.save("s1", {"draft": "v1"}, owner="alice")
    workbench.save("s1", {"draft": "v2"}, expected_version=1)
    redis_proxy.down()
    session = workbench.load("s1")
    assert session.state == {"draft": "v2"} and session.version == 2 and session.owner == "alice"


@pytest.mark.parametrize("interval", [0, 60])
def test_a_session_created_under_the_id_of_an_ended_one_is_served_from_its_copy_during_an_outage(
    redis_proxy, hotcache_config, interval
):
    """The new incarnation's copy replaces the ended one's mark and is not ended itself (request path and bulk)."""
    hotcache_config(WORKBENCH_DURABLE_INTERVAL=interval)
    workbench.save("s1", {"old": 1}, owner="alice")
    workbench.end("s1")
    workbench.flush_durable()
    assert active("s1")["ended"] is True  # the ended mark
    workbench.save("s1", {"new": 1}, owner="bob")
    workbench.flush_durable()
    workbench.save("s1", {"new": 2}, expected_version=1)
    workbench.flush_durable()
    assert "ended" not in active("s1")
    new_process()
    redis_proxy.down()
    session = workbench.load("s1")
    assert (session.state, session.version, session.owner) == ({"new": 2}, 2, "bob")
    assert workbench.save("s1", {"new": 3}, expected_version=2) == 3


def test_during_the_outage_a_versioned_save_continues_from_the_durable_copy(redis_proxy):
    workbench.save("s1", {"n": 1})
    redis_proxy.down()
    assert workbench.save("s1", {"n": 2}, expected_version=1) == 2
    with pytest.raises(workbench.Conflict):
        workbench.save("s1", {"n": "stale"}, expected_version=1)
    assert workbench.load("s1").state == {"n": 2}


def test_when_redis_returns_the_newer_outage_version_wins_over_the_older_redis_copy(redis_proxy, clock, raw_redis):
    for n in range(1, 6):
        workbench.save("s1", {"n": n})  # Redis and MongoDB: v5
    redis_proxy.down()
    assert workbench.save("s1", {"n": 6}, expected_version=5) == 6  # MongoDB only: v6
    back(redis_proxy, clock)
    session = workbench.load("s1")
    assert session.state == {"n": 6} and session.version == 6
    assert workbench.save("s1", {"n": 7}, expected_version=6) == 7
    assert workbench.load("s1").version == 7 and active("s1")["version"] == 7


def test_after_an_outage_a_versioned_save_is_checked_before_it_lands_on_the_older_copy(redis_proxy, clock):
    workbench.save("s1", {"n": 1})
    redis_proxy.down()
    workbench.save("s1", {"n": 2}, expected_version=1)
    back(redis_proxy, clock)
    # The client holds v2 from the outage; Redis still has v1: the save continues from v2, no Conflict.
    assert workbench.save("s1", {"n": 3}, expected_version=2) == 3
    with pytest.raises(workbench.Conflict):
        workbench.save("s1", {"n": "stale"}, expected_version=1)


def test_after_an_outage_a_blind_save_does_not_overwrite_the_outage_version(redis_proxy, clock):
    workbench.save("s1", {"n": 1})
    redis_proxy.down()
    workbench.save("s1", {"n": 2})
    back(redis_proxy, clock)
    assert workbench.save("s1", {"n": 3}) == 3  # based on the outage v2, not Redis's v1


def test_a_process_that_never_saw_the_outage_is_fenced_by_the_process_that_did(redis_proxy, clock):
    workbench.save("s1", {"n": 1})
    workbench.save("s2", {"n": 1})
    redis_proxy.down()
    workbench.save("s1", {"n": 2}, expected_version=1)
    back(redis_proxy, clock)
    workbench.load("s2")  # raises the fence (this process wrote on MongoDB during the outage)
    new_process()  # another process: it knows nothing of the outage
    assert workbench.load("s1").version == 2


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_the_persister_reconciles_outage_copies_and_lowers_the_fence(redis_proxy, clock, raw_redis, key_prefix):
    workbench.save("s1", {"n": 1})
    redis_proxy.down()
    workbench.save("s1", {"n": 2}, expected_version=1)
    back(redis_proxy, clock)
    workbench.load("other")  # raises the fence
    assert raw_redis.exists(f"{key_prefix}:{{workbench:s}}:fence")
    result = workbench.persist()
    assert result.reconciled == 1 and result.errors == []
    assert not raw_redis.exists(f"{key_prefix}:{{workbench:s}}:fence")
    assert _envelope._open_envelope("s1", raw_redis.hget(f"{key_prefix}:{{workbench:s}}:d:s1", "m")).version == 2
    with count_redis() as c:
        assert workbench.load("s1").state == {"n": 2}
    assert c.mongo_ops == 0 and c.round_trips == 1
    assert active("s1")["origin"] == "redis"


def test_a_session_ended_during_the_outage_is_not_brought_back_by_redis(redis_proxy, clock):
    workbench.save("s1", {"n": 1}, owner="alice")
    redis_proxy.down()
    assert workbench.end("s1") is True
    assert workbench.load("s1") is None
    back(redis_proxy, clock)
    assert workbench.load("s1") is None  # the old Redis copy was dropped, not served
    workbench.persist()
    assert history_ids() == Counter({"s1": 1})
    assert active("s1") is None


def test_a_new_session_over_an_outage_tombstone_still_drops_the_old_redis_copy(redis_proxy, clock):
    workbench.save("s1", {"old": True})
    redis_proxy.down()
    workbench.end("s1")
    assert workbench.save("s1", {"new": True}) == 1
    back(redis_proxy, clock)
    session = workbench.load("s1")
    assert session.state == {"new": True} and session.version == 1


def test_concurrent_versioned_saves_lose_no_update_and_the_durable_copy_ends_at_the_last_version():
    workbench.save("counter", {"n": 0})
    threads_n, per_thread = 4, 15
    increment_concurrently("counter", threads_n, per_thread)
    final = workbench.load("counter")
    assert final.state["n"] == threads_n * per_thread
    doc = active("counter")
    assert doc["version"] == final.version and doc["state"] == f'{{"n":{threads_n * per_thread}}}'


def test_an_older_version_never_overwrites_a_newer_durable_copy():
    workbench.save("s1", {"n": 1})
    workbench.save("s1", {"n": 2})
    # A slow request's copy of v1 arriving late (same incarnation): the guarded upsert leaves v2.
    doc = active("s1")
    late = _envelope._seal_envelope(
        "s1",
        version=1,
        token=doc["token"],
        owner=None,
        created=_envelope._ts(doc["created_at"]).timestamp(),
        updated=_envelope._ts(doc["updated_at"]).timestamp(),
        digest=_envelope._digest('{"n":1}'),
    )
    _durable._durable_write("s1", late, '{"n":1}')
    assert active("s1")["version"] == 2 and active("s1")["state"] == '{"n":2}'


def test_mongodb_down_during_a_healthy_save_the_save_succeeds_and_is_counted():
    workbench.save("s1", {"n": 1})
    with mongo_down(), count_redis() as c:
        assert workbench.save("s1", {"n": 2}) == 2
        assert workbench.save("s1", {"n": 3}) == 3
    assert c.events["workbench:durable_save_failed"] == 2
    assert workbench.load("s1").version == 3
    assert active("s1")["version"] == 1  # stale until the next save; Redis holds v3
    workbench.save("s1", {"n": 4})
    assert active("s1")["version"] == 4


def test_with_durable_saves_off_nothing_is_written_to_mongodb(hotcache_config, redis_proxy):
    hotcache_config(WORKBENCH_DURABLE_SAVES=False)
    with count_redis() as c:
        workbench.save("s1", {"n": 1})
    assert c.mongo_ops == 0 and active("s1") is None
    redis_proxy.down()
    assert workbench.load("s1") is None


def test_ended_and_idle_sessions_reach_history_once_and_leave_workbench_active(clock):
    workbench.save("ended", {"n": 1})
    workbench.end("ended")
    mark = active("ended")  # end() turns the durable copy into its ended mark: no session, and no late copy
    assert (mark["ended"], mark["version"], mark["state"]) == (True, 1, "{}")
    workbench.save("idle", {"n": 1})
    clock.advance(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER + 1)
    first = workbench.persist()
    assert (first.ended, first.idle) == (1, 1)
    assert active("idle") is None and active("ended") is None  # removed in the persister's batch step
    again = workbench.persist()
    assert again.persisted == 0
    assert history_ids() == Counter({"ended": 1, "idle": 1})


def test_a_durable_copy_whose_ended_mark_failed_is_never_loaded_and_leaves_with_the_persister(clock):
    workbench.save("s1", {"n": 1})
    with mongo_down():
        assert workbench.end("s1")  # the ended mark fails: the live copy stays behind
    assert active("s1")["version"] == 1 and not active("s1").get("ended")
    new_process()
    assert workbench.load("s1") is None  # a Redis miss: Redis's ended record keeps the copy from coming back
    assert active("s1")["ended"] is True  # and the check marked it ended
    result = workbench.persist()
    assert result.ended == 1 and active("s1") is None and history_ids() == Counter({"s1": 1})
    clock.advance(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER + 1)
    assert workbench.persist().persisted == 0 and history_ids() == Counter({"s1": 1})
    # It never blocked the id either.
    assert workbench.save("s1", {"new": True}) == 1 and active("s1")["version"] == 1


@pytest.mark.parametrize("looked_up", [False, True], ids=["left-alone", "missed-in-redis-first"])
def test_a_copy_written_after_the_persister_is_never_loaded_and_is_swept_without_a_second_record(clock, looked_up):
    workbench.save("s1", {"n": 1})
    late = _envelope._recall("s1")  # the save another process made before the end, and has not written yet
    workbench.end("s1")
    workbench.persist()
    assert active("s1") is None and history_ids() == Counter({"s1": 1})
    _durable._durable_write("s1", late, '{"n":1}')  # its copy lands after all that
    assert active("s1")["version"] == 1 and not active("s1").get("ended")
    if looked_up:
        new_process()
        assert workbench.load("s1") is None  # Redis's ended record: not brought back (and marked ended)
        assert active("s1")["ended"] is True
    clock.advance(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER + 1)
    result = workbench.persist()
    assert result.from_fallback == 0 and active("s1") is None and history_ids() == Counter({"s1": 1})
    # It never blocked the id either.
    assert workbench.save("s1", {"new": True}) == 1 and active("s1")["version"] == 1


def test_a_long_lived_session_is_not_swept_while_redis_holds_it(clock):
    workbench.save("s1", {"n": 1})
    for _ in range(3):
        clock.advance(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER - 10)
        workbench.load("s1")  # loads do not touch MongoDB: its copy looks idle there
        assert workbench.persist().persisted == 0
    assert history_ids() == Counter() and active("s1")["version"] == 1


def test_durable_saves_setting_must_be_a_bool(hotcache_config):
    hotcache_config(WORKBENCH_DURABLE_SAVES="yes")
    [message] = check_workbench()
    assert message.id == "hotcache.E055" and "WORKBENCH_DURABLE_SAVES" in message.msg and message.hint


def test_a_session_lost_from_redis_and_replaced_by_a_new_one_still_reaches_history(raw_redis, clock):
    workbench.save("s1", {"n": 1}, owner="alice")
    workbench.save("s1", {"n": 2})
    raw_redis.delete(_layout._data_key("s1"))  # evicted, or Redis restarted without its data
    assert workbench.save("s1", {"other": True}, owner="bob") == 1  # the id is free in Redis: a new incarnation
    assert active("s1")["owner"] == "bob"
    clock.advance(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER + 1)
    workbench.persist()
    entries = sorted((e.owner, e.version, e.reason) for e in workbench.history())
    assert entries == [("alice", 2, "idle"), ("bob", 1, "idle")]


def test_a_leftover_copy_of_an_ended_session_replaced_before_the_persister_ran_is_recorded_once_as_ended(clock):
    workbench.save("s1", {"n": 1})
    with mongo_down():
        workbench.end("s1")  # its durable copy stays behind
    workbench.save("s1", {"new": True})  # replaces it (idle record for now)
    workbench.persist()  # the ended record replaces the idle one (rank-guarded)
    [entry] = [e for e in workbench.history() if e.state == {"n": 1}]
    assert entry.reason == "ended" and history_ids() == Counter({"s1": 1})


def test_a_put_back_is_refused_when_an_end_ran_after_the_check_read_the_ended_records(raw_redis, key_prefix):
    """wb_reconcile re-checks what Python read: an end between the read and the put wins (atomically)."""
    workbench.save("s1", {"n": 1})
    doc = active("s1")
    read_before, _ = _recover._ended_records("s1")
    assert read_before == 0
    workbench.end("s1")  # between the check's read and its put
    keys_ = [_layout._data_key("s1"), _layout._index_key(_layout._bucket("s1")), _layout._gone_key("s1")]

    def put(gone):
        args = _recover._reconcile_args("put", "", b"", doc, "s1", gone)
        return redis_backend.call("workbench", functools.partial(_layout._RECONCILE, keys=keys_, args=args))

    assert put(read_before) == 0 and not raw_redis.exists(_layout._data_key("s1"))
    assert put(1) == 1  # the count is what refused it (the script would put it back on what it was told)


def test_a_retyped_ended_record_breaks_neither_end_nor_the_recovery_check(raw_redis):
    """Someone who can write to Redis retypes a session's ended records: end() still ends it in Redis (the
    key is replaced), and a recovery check counts it tampered and trusts no record in it (as if deleted)."""
    gone = _layout._gone_key("s1")
    raw_redis.set(gone, "not a hash")
    workbench.save("s1", {"n": 1})
    with count_redis() as c:
        assert workbench.end("s1")
    assert c.events["workbench:fallback"] == 0 and raw_redis.type(gone) == b"hash"
    assert active("s1")["ended"] is True

    workbench.save("s2", {"n": 1})
    late = _envelope._recall("s2")
    workbench.end("s2")
    mongo.collection(workbench.ACTIVE, feature="test").delete_one({"_id": "s2"})
    _durable._durable_write("s2", late, '{"n":1}')  # a late copy, its mark not landed
    raw_redis.set(_layout._gone_key("s2"), "not a hash")
    new_process()
    with count_redis() as c:
        session = workbench.load("s2")  # no exception, no fallback: the record is absent, as if deleted
    assert c.events["workbench:tampered"] == 1 and c.events["workbench:fallback"] == 0
    assert session is not None and session.version == 1  # the documented limit of a Redis writer (deletion)


def _late_copy_of_an_ended_incarnation_over_a_new_one():
    """The session ended and was created again under the same id; a copy of the OLD incarnation (a save another
    process made before the end, and had not written yet) is still to land, and the new session's copy is in."""
    workbench.save("s1", {"old": 1}, owner="alice")
    workbench.save("s1", {"old": 2})
    late = _envelope._recall("s1")  # v2 of the old incarnation, higher than the new session's v1
    assert workbench.end("s1")
    assert workbench.save("s1", {"new": 1}, owner="bob") == 1
    new = active("s1")
    assert (new["token"], new["version"]) != (late.token, late.version) and not new.get("ended")
    return late, new


@pytest.mark.parametrize("path", ["request", "bulk"])
def test_a_late_copy_of_an_older_incarnation_never_replaces_the_newer_incarnations_copy(path):
    late, new = _late_copy_of_an_ended_incarnation_over_a_new_one()
    with count_redis() as c:
        if path == "request":
            _durable._durable_write("s1", late, '{"old":2}')
        else:
            _durable._write_copies({"s1": _durable._Copy(late, '{"old":2}')})
    doc = active("s1")
    assert (doc["token"], doc["version"], doc["state"], doc["owner"]) == (new["token"], 1, '{"new":1}', "bob")
    assert history_ids() == Counter()  # nor is the new session put in history as a replaced copy
    assert c.round_trips == 1  # Redis is asked which incarnation it holds, off the request path (E11000 only)


@pytest.mark.parametrize("redis_up", [True, False], ids=["redis-up", "redis-down"])
def test_a_copy_of_the_incarnation_redis_holds_replaces_another_incarnations_copy(
    raw_redis, hotcache_config, redis_proxy, redis_up
):
    hotcache_config(WORKBENCH_DURABLE_INTERVAL=60)  # copies wait for the writer, flushed explicitly here
    workbench.save("s1", {"n": 1}, owner="alice")
    assert _durable.writer.flush() == 1 and active("s1")["owner"] == "alice"
    raw_redis.delete(_layout._data_key("s1"))  # lost from Redis: its copy stays, live
    assert workbench.save("s1", {"other": 1}, owner="bob") == 1
    assert workbench.save("s1", {"other": 2}, expected_version=1) == 2
    if not redis_up:
        redis_proxy.down()
    with count_redis() as c:
        assert _durable.writer.flush() == 1
    doc = active("s1")
    if redis_up:  # Redis holds bob's incarnation: its copy replaces alice's, which goes to history
        assert (doc["owner"], doc["version"], doc["state"]) == ("bob", 2, '{"other":2}')
        assert history_ids() == Counter({"s1": 1})
    else:  # which incarnation is current is unknown: nothing is replaced, the failed copy is counted
        assert (doc["owner"], doc["version"]) == ("alice", 1)
        assert c.events["workbench:durable_save_failed"] == 1
