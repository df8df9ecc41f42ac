"""Workbench sessions when Redis dies between doing and answering (a lost reply, ``maybe_applied``), on the real
Redis through a proxy that either forwards the save/end script and drops its reply ("apply") or never forwards
it ("drop"): a session created once reaches history exactly once, at its last version."""

from collections import Counter

import pytest

from hotcache import workbench
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.testing import count_redis, new_process
from hotcache.workbench import _envelope, _layout
from tests.support.redis_cluster import warm_every_node

# MongoDB-facing contracts: each test runs on the stand-in and on a real server ([standin] / [real]).
pytestmark = pytest.mark.mongo_contract


@pytest.fixture(autouse=True)
def _clean_workbench_keys(raw_redis, key_prefix):
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*"):
        raw_redis.unlink(key)
    new_process()  # and without envelopes this process remembers from an earlier test


def active(session_id):
    return mongo.collection(workbench.ACTIVE, feature="test").find_one({"_id": session_id})


def history():
    return list(mongo.collection(workbench.HISTORY, feature="test").find({}))


def redis_token(raw_redis, session_id):
    """The incarnation token of the session Redis holds (from its sealed envelope), or None."""
    envelope = _envelope._open_envelope(session_id, raw_redis.hget(_layout._data_key(session_id), "m"))
    return envelope.token if envelope is not None else None


def reopen_gate(clock):
    """The lost reply opened the health gate; let it probe again (a fresh connection)."""
    clock.advance(float(hotcache_settings.HEALTH_COOLDOWN) + 1)
    redis_backend.call("t", lambda r: r.ping())


def persist_all(clock):
    """Persist what is due now, then once more after every leftover is idle (the MongoDB sweep included)."""
    first = workbench.persist()
    clock.advance(float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER) + 1)
    second = workbench.persist()
    assert not first.errors and not second.errors
    return first, second


def arm(proxy, raw_redis, script, mode):
    raw_redis.script_load(script.body)  # EVALSHA is then the one command that carries the script
    proxy.arm(script.sha.encode(), mode)


@pytest.mark.parametrize("mode", ["apply", "drop"])
def test_a_create_whose_reply_was_lost_reaches_history_once_at_its_last_version(
    mode, lost_reply_proxy, raw_redis, clock
):
    arm(lost_reply_proxy, raw_redis, _layout._SAVE, mode)
    assert workbench.save("s1", {"n": 1}, owner="alice", expected_version=0) == 1  # on MongoDB
    assert lost_reply_proxy.lost == [mode]
    in_redis = redis_token(raw_redis, "s1")
    if mode == "apply":
        assert in_redis == active("s1")["token"]  # one incarnation in both stores
    else:
        assert in_redis is None
    # Edits during the outage (the gate is open), then after Redis is back.
    assert workbench.load("s1").version == 1
    assert workbench.save("s1", {"n": 2}, expected_version=1) == 2
    reopen_gate(clock)
    session = workbench.load("s1")
    assert (session.version, session.state, session.owner) == (2, {"n": 2}, "alice")
    assert workbench.save("s1", {"n": 3}, expected_version=2) == 3
    assert workbench.end("s1") is True
    persist_all(clock)
    records = history()
    assert Counter(r["session_id"] for r in records) == {"s1": 1}
    assert (records[0]["version"], records[0]["reason"], records[0]["state"]) == (3, "ended", '{"n":3}')
    assert active("s1") is None and workbench.load("s1") is None


def test_a_lost_create_ended_during_the_outage_is_not_brought_back_by_redis(lost_reply_proxy, raw_redis, clock):
    arm(lost_reply_proxy, raw_redis, _layout._SAVE, "apply")
    assert workbench.save("s1", {"n": 1}, expected_version=0) == 1
    assert workbench.save("s1", {"n": 2}, expected_version=1) == 2
    assert workbench.end("s1") is True  # on MongoDB: history now, and a tombstone for Redis's v1
    reopen_gate(clock)
    assert workbench.load("s1") is None  # Redis's copy of the same incarnation was dropped, not served
    persist_all(clock)
    records = history()
    assert Counter(r["session_id"] for r in records) == {"s1": 1}
    assert (records[0]["version"], records[0]["reason"]) == (2, "ended")


@pytest.mark.parametrize("mode", ["apply", "drop"])
def test_an_end_whose_reply_was_lost_reaches_history_once_at_its_last_version(mode, lost_reply_proxy, raw_redis, clock):
    for n in range(1, 4):
        workbench.save("s1", {"n": n})  # Redis v3 (and its durable copy)
    arm(lost_reply_proxy, raw_redis, _layout._END, mode)
    assert workbench.end("s1") is True
    assert lost_reply_proxy.lost == [mode]
    reopen_gate(clock)
    assert workbench.load("s1") is None  # ended either way ("drop": the tombstone removes Redis's copy)
    persist_all(clock)
    records = history()
    assert Counter(r["session_id"] for r in records) == {"s1": 1}
    assert (records[0]["version"], records[0]["reason"]) == (3, "ended")
    assert active("s1") is None


@pytest.mark.parametrize(("mode", "reason"), [("apply", "ended"), ("drop", "idle")])
def test_without_durable_saves_an_end_whose_reply_was_lost_answers_true_and_reaches_history_once(
    mode, reason, hotcache_config, lost_reply_proxy, raw_redis, clock
):
    hotcache_config(WORKBENCH_DURABLE_SAVES=False)
    workbench.save("s1", {"n": 1})
    workbench.save("s1", {"n": 2})
    arm(lost_reply_proxy, raw_redis, _layout._END, mode)
    assert workbench.end("s1") is True  # outcome unknown: no MongoDB copy to end from
    reopen_gate(clock)
    persist_all(clock)  # "drop": Redis kept it; it reaches history once it is idle
    records = history()
    assert Counter(r["session_id"] for r in records) == {"s1": 1}
    assert (records[0]["version"], records[0]["reason"]) == (2, reason)


def test_the_healthy_path_costs_are_unchanged(raw_redis):
    workbench.save("warm", {})
    workbench.load("warm")
    warm_every_node()  # on a cluster "s1" may live on another master than "warm"
    with count_redis() as c:
        assert workbench.save("s1", {"n": 1}, expected_version=0) == 1
    assert (c.round_trips, c.mongo_ops) == (1, 0)  # the durable copy waits for the background writer
    with count_redis() as c:
        assert workbench.save("s1", {"n": 2}, expected_version=1) == 2
    assert (c.round_trips, c.mongo_ops) == (1, 0)
    with count_redis() as c:
        assert workbench.load("s1").version == 2
    assert (c.round_trips, c.mongo_ops) == (1, 0)
    workbench.flush_durable()
    assert active("s1")["token"] == redis_token(raw_redis, "s1") and active("s1")["version"] == 2
