"""hotcache's Celery tasks report what happened: a run an outage stopped is retried, then FAILURE (never SUCCESS);
a lock held by another analytics sync is SUCCESS with locked_out; nothing a failed run left behind is lost."""

from __future__ import annotations

import logging
import threading
from collections import Counter

import pytest
from celery import signals

from hotcache import analytics, apikeys, tasks, workbench
from hotcache.analytics import _sync
from hotcache.backends import mongo
from hotcache.exceptions import SyncIncomplete
from hotcache.testing import mongo_down
from tests.analytics.fixtures import _empty_fallback_buffer, close_hours, hourly_total  # noqa: F401

ATTEMPTS = 1 + tasks.RETRY_POLICY["max_retries"]


@pytest.fixture(autouse=True)
def _empty_touched_index(raw_redis, key_prefix):
    """No API key used by an earlier test in this run is in today's touched index."""
    for key in list(raw_redis.scan_iter(match=f"{key_prefix}:{{apikeys:touched}}:*")):
        raw_redis.delete(key)


def _spy(monkeypatch, module, name):
    """Count the calls of module.name (the real function still runs)."""
    real = getattr(module, name)
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def _track(clock, n=5):
    analytics.track("page_view", path="/a", count=n, visitor_id="v1")
    close_hours(clock)
    return n


def _history():
    return Counter(d["session_id"] for d in mongo.collection(workbench.HISTORY, feature="test").find({}))


# --- analytics ---


def test_an_analytics_sync_stopped_by_mongodb_fails_after_its_retries_and_loses_nothing(clock, monkeypatch):
    n = _track(clock)
    calls = _spy(monkeypatch, analytics, "sync")
    with mongo_down():
        outcome = tasks.sync_analytics.apply()
    assert outcome.state == "FAILURE" and len(calls) == ATTEMPTS
    assert isinstance(outcome.result, SyncIncomplete)
    assert "sync stopped: MongoUnavailable" in str(outcome.result) and "stay pending" in str(outcome.result)
    assert outcome.result.outcome["error"] and outcome.result.outcome["pending_left"] == 1
    after = tasks.sync_analytics.apply()  # MongoDB is back: the pending batch moves, once
    assert after.state == "SUCCESS" and after.result["recovered"] == 1
    assert hourly_total() == n


def test_an_analytics_sync_with_redis_down_fails_naming_it(clock, redis_down):
    outcome = tasks.sync_analytics.apply()
    assert outcome.state == "FAILURE" and isinstance(outcome.result, SyncIncomplete)
    assert "RedisUnavailable" in str(outcome.result) and "nothing is lost" in str(outcome.result)


def test_another_sync_holding_the_lock_is_a_success_that_did_nothing(clock, monkeypatch):
    _track(clock)
    inside, release = threading.Event(), threading.Event()

    def checkpoint(name):
        if name == "after_claim":
            inside.set()
            release.wait(20)

    monkeypatch.setattr(_sync, "checkpoint", checkpoint)
    first = []
    holder = threading.Thread(target=lambda: first.append(analytics.sync()))
    holder.start()
    try:
        assert inside.wait(20)
        outcome = tasks.sync_analytics.apply()
    finally:
        release.set()
        holder.join(30)
    assert outcome.state == "SUCCESS" and outcome.result["locked_out"] is True and outcome.result["counters"] == 0
    assert first[0].counters == 1


# --- workbench ---


def test_a_persister_stopped_by_mongodb_fails_and_the_sessions_stay_queued(monkeypatch):
    workbench.save("s-1", {"a": 1}, owner="alice")
    workbench.end("s-1")
    calls = _spy(monkeypatch, workbench, "persist")
    with mongo_down():
        outcome = tasks.persist_workbench_sessions.apply()
    assert outcome.state == "FAILURE" and len(calls) == ATTEMPTS
    assert "persist_workbench incomplete (the rest stays queued): mongodb" in str(outcome.result)
    assert outcome.result.outcome["errors"]
    after = tasks.persist_workbench_sessions.apply()
    # The run's key prefix is shared: a session an earlier test ended may be persisted by this run too.
    assert after.state == "SUCCESS" and after.result["ended"] >= 1
    assert _history()["s-1"] == 1


def test_a_persister_with_redis_down_fails_naming_redis(redis_down):
    outcome = tasks.persist_workbench_sessions.apply()
    assert outcome.state == "FAILURE" and "redis:" in str(outcome.result)


# --- API-key usage ---


def test_the_usage_sync_with_mongodb_down_fails_cleanly_logs_once_and_loses_nothing(caplog):
    new = apikeys.create("alice")
    apikeys.check(new.raw_key)
    with mongo_down(), caplog.at_level(logging.WARNING, logger="hotcache.apikeys"):
        result = apikeys.sync_usage()  # the service: an outcome, not a raise
        assert result.error.startswith("MongoUnavailable") and result.written == 0
        assert len(caplog.records) == 1 and "usage sync stopped" in caplog.records[0].getMessage()
        outcome = tasks.sync_apikey_usage.apply()
    assert outcome.state == "FAILURE" and isinstance(outcome.result, SyncIncomplete)
    assert "usage sync stopped: MongoUnavailable" in str(outcome.result) and "Nothing is lost" in str(outcome.result)
    after = tasks.sync_apikey_usage.apply()
    assert after.state == "SUCCESS" and after.result["written"] == 1 and after.result["error"] == ""
    assert apikeys.usage(new.key_id, days=1)[0][1] == 1


def test_the_usage_sync_with_redis_down_fails_too(redis_down):
    outcome = tasks.sync_apikey_usage.apply()
    assert outcome.state == "FAILURE" and "RedisUnavailable" in str(outcome.result)
    assert outcome.result.outcome["redis_available"] is False


def test_a_bad_argument_fails_at_once_without_retries(monkeypatch):
    calls = _spy(monkeypatch, apikeys, "sync_usage")
    outcome = tasks.sync_apikey_usage.apply(kwargs={"days": 0})
    assert outcome.state == "FAILURE" and isinstance(outcome.result, ValueError) and len(calls) == 1


# --- through a real worker (Redis broker and result backend) ---


def test_a_worker_retries_a_usage_sync_mongodb_stopped_and_the_retry_copies_the_counts(celery_worker):
    new = apikeys.create("alice")
    apikeys.check(new.raw_key)
    retried = threading.Event()

    def on_retry(sender=None, **kwargs):
        if sender is not None and sender.name == tasks.sync_apikey_usage.name:
            retried.set()

    signals.task_retry.connect(on_retry, weak=False)
    try:
        with mongo_down():
            pending = tasks.sync_apikey_usage.delay()
            assert retried.wait(30)
            assert pending.state == "RETRY"
        result = pending.get(timeout=90)  # the retry runs after up to 15 s, MongoDB is back
    finally:
        signals.task_retry.disconnect(on_retry)
    assert pending.state == "SUCCESS" and result["written"] == 1
    assert apikeys.usage(new.key_id, days=1)[0][1] == 1


def test_a_worker_marks_the_last_failed_attempt_failure_with_the_reason(celery_worker):
    new = apikeys.create("alice")
    apikeys.check(new.raw_key)
    with mongo_down():
        last = tasks.sync_apikey_usage.apply_async(retries=tasks.RETRY_POLICY["max_retries"])
        error = last.get(timeout=30, propagate=False)
    assert last.state == "FAILURE" and isinstance(error, SyncIncomplete)
    assert "usage sync stopped: MongoUnavailable" in str(error) and error.outcome["written"] == 0
