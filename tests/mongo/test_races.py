"""Races on the MongoDB paths, between processes (each with its own pymongo client) on a real server.

The stand-in serialises every call under one lock in one process, so it cannot show a lost update or a
double success. Here the features run on a real MongoDB server from several forked processes released
together by a barrier. For the outage paths Redis is a closed port in every process (``redis_down``); the
sync and persist races run with Redis up, since that is where their input lives.
"""

from __future__ import annotations

import collections
import io

import pytest
from django.core.management import call_command

from hotcache import analytics, apikeys, mfa, workbench
from tests.support.processes import race

pytestmark = [pytest.mark.django_db(databases=[]), pytest.mark.timeout(300)]


# --- MFA: one code, one success --------------------------------------------------------------------


def _verify_once(index, barrier, code):
    barrier.wait()
    result = mfa.verify("alice", code)
    return result.ok, result.reason.value, result.store


def test_one_mfa_code_verified_by_8_processes_succeeds_exactly_once(real_mongo, redis_down):
    code = mfa.issue("alice")
    assert real_mongo.db()["mfa_codes"].count_documents({}) == 1, "issued on MongoDB: Redis is down"
    results = race(8, _verify_once, code)
    assert [r[0] for r in results].count(True) == 1, results
    assert {r[1] for r in results if not r[0]} == {"expired_or_missing"}
    assert {r[2] for r in results} == {"mongodb"}
    assert real_mongo.db()["mfa_codes"].find_one({})["st"] == "used"


def _guess_twice(index, barrier, wrong):
    barrier.wait()
    return [(r.reason.value, r.burned) for r in (mfa.verify("bob", wrong) for _ in range(2))]


def test_guesses_from_8_processes_are_bounded_by_the_attempt_cap(real_mongo, redis_down, settings):
    """16 wrong guesses at once: exactly MFA_MAX_ATTEMPTS are counted, the last of them burns the code."""
    cap = settings.HOTCACHE.get("MFA_MAX_ATTEMPTS", 5)
    code = mfa.issue("bob")
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    answers = collections.Counter(a for guesses in race(8, _guess_twice, wrong) for a in guesses)
    assert answers == {("invalid", False): cap - 1, ("too_many_attempts", True): 1,
                       ("too_many_attempts", False): 16 - cap}
    doc = real_mongo.db()["mfa_codes"].find_one({})
    assert doc["a"] == cap and doc["st"] == "burned" and "d" not in doc
    assert mfa.verify("bob", code).reason == mfa.Reason.TOO_MANY_ATTEMPTS


# --- API keys: a daily limit under concurrency --------------------------------------------------------


def _check_five_times(index, barrier, raw_key):
    barrier.wait()
    return [apikeys.check(raw_key).allowed for _ in range(5)]


def test_8_processes_checking_one_key_allow_exactly_its_daily_limit(real_mongo, redis_down):
    key = apikeys.create("acme", daily_limit=20)
    results = race(8, _check_five_times, key.raw_key)
    allowed = sum(sum(r) for r in results)
    assert allowed == 20, results
    usage = real_mongo.db()["api_key_usage"].find_one({"key_id": key.key_id})
    assert usage["fallback"] == 20
    assert apikeys.check(key.raw_key).allowed is False


def test_8_processes_checking_an_unlimited_key_count_every_use(real_mongo, redis_down):
    """The first uses of the day race to create the usage document: no use is lost to the upsert race."""
    key = apikeys.create("acme")
    results = race(8, _check_five_times, key.raw_key)
    assert all(all(r) for r in results)
    assert real_mongo.db()["api_key_usage"].find_one({"key_id": key.key_id})["fallback"] == 40


# --- workbench: read-modify-write loses no update ------------------------------------------------------


def _increment(index, barrier, session_id, times):
    conflicts = 0
    barrier.wait()
    for _ in range(times):
        while True:
            current = workbench.load(session_id)
            state = dict(current.state)
            state["n"] += 1
            state[f"p{index}"] = state.get(f"p{index}", 0) + 1
            try:
                workbench.save(session_id, state, expected_version=current.version)
                break
            except workbench.Conflict:
                conflicts += 1
    return conflicts


def test_6_processes_read_modify_write_one_workbench_session_lose_no_update(real_mongo, redis_down):
    version = workbench.save("race-1", {"n": 0}, owner="team")
    results = race(6, _increment, "race-1", 4)
    final = workbench.load("race-1")
    assert final.state["n"] == 24
    assert all(final.state[f"p{i}"] == 4 for i in range(6))
    assert final.version == version + 24
    assert sum(results) > 0, "the processes did contend (else this proves nothing)"
    doc = real_mongo.db()["workbench_active"].find_one({"_id": "race-1"})
    assert doc["version"] == final.version


# --- jobs: two syncs and two persisters at once ----------------------------------------------------------


def _sync_or_track(index, barrier, events_per_tracker):
    barrier.wait()
    if index < 2:
        out = io.StringIO()
        call_command("sync_analytics", include_current_hour=True, stdout=out)
        return out.getvalue()
    for i in range(events_per_tracker):  # tracked while the two syncs claim and apply
        assert analytics.track("race_live", path=f"/p/{index}/{i % 7}") == "redis"
    return ""


def test_two_analytics_syncs_at_once_with_tracking_keep_totals_exact(real_mongo, hotcache_config):
    """The lock is off (ANALYTICS_SYNC_LOCK_TIMEOUT=0): the two runs really overlap, on the same batches."""
    hotcache_config(ANALYTICS_SYNC_LOCK_TIMEOUT=0, ANALYTICS_SYNC_CHUNK=150)
    sent = collections.Counter()
    for i in range(600):
        event = f"race_{i % 3}"
        analytics.track(event, path=f"/page/{i % 200}", count=1 + i % 4)
        sent[event] += 1 + i % 4
    race(4, _sync_or_track, 150)
    sent["race_live"] += 2 * 150
    result = analytics.sync(include_current_hour=True)
    assert not result.error and result.pending_left == 0
    totals = collections.Counter()
    for doc in real_mongo.db()["analytics_hourly"].find({}):
        totals[doc["event"]] += doc["count"]
    assert totals == sent


def _persist(index, barrier):
    barrier.wait()
    out = io.StringIO()
    call_command("persist_workbench", stdout=out)
    return out.getvalue()


def test_two_workbench_persisters_at_once_write_each_session_to_history_once(real_mongo, hotcache_config):
    hotcache_config(WORKBENCH_DURABLE_SAVES=False, WORKBENCH_PERSIST_BATCH=10, WORKBENCH_PERSIST_IDLE_AFTER=0)
    ended = [f"ended-{i}" for i in range(60)]
    idle = [f"idle-{i}" for i in range(20)]
    for sid in ended + idle:
        workbench.save(sid, {"sid": sid}, owner="team")
    for sid in ended:
        assert workbench.end(sid)
    race(2, _persist)
    call_command("persist_workbench", stdout=io.StringIO())  # whatever the two left claimed or kept
    history = collections.Counter(d["session_id"] for d in real_mongo.db()["workbench_history"].find({}))
    assert sorted(history) == sorted(ended + idle)
    assert set(history.values()) == {1}
