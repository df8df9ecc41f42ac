"""The sync moves every tracked event into MongoDB exactly once: crashes, outages, concurrency, redelivery."""

import threading
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from hotcache import analytics, tasks
from hotcache.analytics import _documents, _sync
from hotcache.backends import mongo
from hotcache.testing import count_redis, mongo_down
from tests.analytics.fixtures import (  # noqa: F401
    _empty_fallback_buffer,
    close_hours,
    hourly_docs,
    hourly_total,
    lose_ack_of_bulk_call,
)

# MongoDB-facing contracts: each test runs on the stand-in and on a real server ([standin] / [real]).
pytestmark = pytest.mark.mongo_contract


class Crash(Exception):
    """Stands in for a process dying at a step: nothing after it runs."""


def _track_backlog(clock, hours=3, paths=8, per_path=3):
    """Events over several closed hours and paths (several batches, several bulk chunks); returns the total."""
    total = 0
    for _ in range(hours):
        for p in range(paths):
            analytics.track("page_view", path=f"/p{p}", count=per_path, visitor_id=f"v{p}")
            analytics.track("signup", path=f"/s{p % 3}")
            total += per_path + 1
        clock.advance(3600)
    close_hours(clock, 0)
    return total


def _pending(raw_redis, key_prefix):
    return raw_redis.smembers(f"{key_prefix}:{{analytics:a}}:pending")


@pytest.fixture
def small_chunks(hotcache_config):
    hotcache_config(ANALYTICS_SYNC_CHUNK=7)


def _crash_at(monkeypatch, step, occurrence=1):
    seen = {"n": 0}

    def checkpoint(name):
        if name == step:
            seen["n"] += 1
            if seen["n"] == occurrence:
                raise Crash(step)

    monkeypatch.setattr(_sync, "checkpoint", checkpoint)


@pytest.mark.parametrize(
    ("step", "occurrence"),
    [
        ("before_claim", 1),
        ("after_claim", 1),
        ("after_chunk", 1),  # part of the bulk write done, nothing released
        ("after_chunk", 3),  # a later chunk: some batches released, one half written
        ("before_release", 1),  # a batch fully written, not released
        ("before_release", 2),
    ],
)
def test_a_crash_at_any_step_then_a_rerun_moves_every_event_once(
    clock, small_chunks, monkeypatch, raw_redis, key_prefix, step, occurrence
):
    n = _track_backlog(clock)
    _crash_at(monkeypatch, step, occurrence)
    with pytest.raises(Crash):
        analytics.sync()
    monkeypatch.undo()
    result = analytics.sync()
    assert not result.error
    assert hourly_total() == n
    assert analytics.sync().counters == 0  # nothing left, nothing re-applied
    assert hourly_total() == n
    assert not _pending(raw_redis, key_prefix)


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_a_crash_after_claim_leaves_the_batch_pending_for_the_next_run(clock, monkeypatch, raw_redis, key_prefix):
    n = _track_backlog(clock, hours=1)
    _crash_at(monkeypatch, "after_claim")
    with pytest.raises(Crash):
        analytics.sync()
    assert len(_pending(raw_redis, key_prefix)) == 1
    monkeypatch.undo()
    result = analytics.sync()
    assert result.recovered == 1 and result.hours_claimed == 0
    assert hourly_total() == n


def test_a_bulk_write_whose_ack_is_lost_is_not_applied_twice(clock, small_chunks, monkeypatch):
    """MongoDB applied a chunk but the reply never came back: the rerun's replay of that chunk changes nothing."""
    n = _track_backlog(clock)
    lose_ack_of_bulk_call(monkeypatch, nth=2)
    assert analytics.sync().error
    monkeypatch.undo()
    result = analytics.sync()
    assert result.counters > result.applied  # the replayed chunk was recognised as applied
    assert hourly_total() == n


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_mongodb_down_keeps_everything_pending_and_the_next_run_moves_it(clock, raw_redis, key_prefix):
    n = _track_backlog(clock)
    with mongo_down():
        result = analytics.sync()
    assert "MongoUnavailable" in result.error and result.pending_left == 3
    assert analytics.sync().batches == 3
    assert hourly_total() == n


def test_two_syncs_at_once_without_the_lock_count_every_event_once(clock, small_chunks, hotcache_config, monkeypatch):
    """Both runs claim, read the same pending batches, then apply them at the same time (the lock is off)."""
    hotcache_config(ANALYTICS_SYNC_LOCK_TIMEOUT=0)
    n = _track_backlog(clock)
    both_read = threading.Barrier(2, timeout=20)

    def checkpoint(name):
        if name == "before_apply":
            both_read.wait()

    monkeypatch.setattr(_sync, "checkpoint", checkpoint)
    results = []
    threads = [threading.Thread(target=lambda: results.append(analytics.sync())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 2 and not any(r.error for r in results)
    assert sum(r.applied for r in results) == len(hourly_docs())  # each counter changed MongoDB once
    assert hourly_total() == n


def test_the_lock_turns_a_second_sync_away_without_touching_anything(clock, monkeypatch):
    n = _track_backlog(clock, hours=1)
    inside = threading.Event()
    release = threading.Event()

    def checkpoint(name):
        if name == "after_claim":
            inside.set()
            release.wait(20)

    monkeypatch.setattr(_sync, "checkpoint", checkpoint)
    first = []
    t = threading.Thread(target=lambda: first.append(analytics.sync()))
    t.start()
    assert inside.wait(20)
    second = analytics.sync()
    release.set()
    t.join(30)
    assert second.locked_out and second.counters == 0
    assert first[0].counters > 0 and hourly_total() == n


def test_the_current_hour_is_left_alone_unless_asked(clock, raw_redis, key_prefix):
    analytics.track("signup", path="/a", count=2)
    assert analytics.sync().counters == 0
    result = analytics.sync(include_current_hour=True)
    assert result.hours_claimed == 1 and hourly_total() == 2
    analytics.track("signup", path="/a", count=5)  # same hour, after the claim: a fresh live counter
    close_hours(clock)
    assert analytics.sync().events == 5
    assert hourly_total() == 7
    assert [d["count"] for d in hourly_docs()] == [7] and len(hourly_docs()[0]["batches"]) == 2


def test_a_redelivered_task_changes_nothing(clock):
    n = _track_backlog(clock, hours=2)
    first = tasks.sync_analytics.apply().get()
    second = tasks.sync_analytics.apply().get()
    assert first["counters"] > 0 and second["counters"] == 0
    assert hourly_total() == n


def test_a_real_celery_worker_runs_the_sync_on_the_redis_broker(celery_worker, clock):
    n = _track_backlog(clock, hours=2)
    out = tasks.sync_analytics.delay().get(timeout=30)
    assert out["error"] == "" and out["events"] == n
    assert hourly_total() == n


def test_bulk_writes_hold_a_thousand_counters_each(clock):
    for i in range(1001):
        analytics.track("page_view", path=f"/p{i}")
    close_hours(clock)
    _documents.hourly_collection()  # index creation happens once per process
    with count_redis() as c:
        result = analytics.sync()
    assert result.counters == 1001 and result.mongo_round_trips == 2
    assert c.mongo_ops == 2
    assert hourly_total() == 1001


def test_many_small_hours_share_bulk_writes(clock):
    for _ in range(30):
        analytics.track("page_view", path="/a")
        analytics.track("page_view", path="/b")
        clock.advance(3600)
    close_hours(clock, 0)
    _documents.hourly_collection()
    with count_redis() as c:
        result = analytics.sync()
    assert result.batches == 30 and result.counters == 60
    assert c.mongo_ops == 1


def test_distinct_visitors_reach_mongodb_and_closed_days_leave_redis(clock, raw_redis, key_prefix):
    for v in ["a", "b", "c", "a"]:
        analytics.track("signup", visitor_id=v)
    analytics.sync(include_current_hour=True)
    docs = mongo.collection(analytics.VISITORS, feature="test").find({})
    assert [(d["event"], d["count"]) for d in docs] == [("signup", 3)]
    clock.advance(2 * 86400)
    result = analytics.sync()
    assert result.days_closed == 1
    assert not list(raw_redis.scan_iter(match=f"{key_prefix}:{{analytics:a}}:v:*"))
    docs = mongo.collection(analytics.VISITORS, feature="test").find({})
    assert [(d["event"], d["count"]) for d in docs] == [("signup", 3)]


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_dry_run_changes_nothing(clock, raw_redis, key_prefix):
    n = _track_backlog(clock, hours=2)
    result = analytics.sync(dry_run=True)
    assert result.dry_run and result.events == n and result.hours_claimed == 2
    assert hourly_total() == 0 and not _pending(raw_redis, key_prefix)


# --- the command ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_command_prints_what_it_moved_and_progress(clock, small_chunks):
    n = _track_backlog(clock)
    out = StringIO()
    call_command("sync_analytics", "--dry-run", stdout=out)
    assert f"Would move 33 counters ({n} events)" in out.getvalue()
    out = StringIO()
    call_command("sync_analytics", stdout=out)
    text = out.getvalue()
    assert f"Moved 33 counters ({n} events) from 3 batch(es)" in text
    assert "7/33 counters written" in text and "33/33 counters written" in text
    assert "MongoDB: 6 bulk round trip(s)" in text
    assert hourly_total() == n


def test_command_include_current_hour(clock):
    analytics.track("signup", count=3)
    out = StringIO()
    call_command("sync_analytics", "--include-current-hour", stdout=out)
    assert "Moved 1 counters (3 events)" in out.getvalue()


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_command_fails_naming_the_outage_and_what_stays_pending(clock):
    _track_backlog(clock, hours=1)
    out = StringIO()
    with mongo_down(), pytest.raises(CommandError, match="1 batch"):
        call_command("sync_analytics", stdout=out)


def test_an_upsert_that_lost_the_insert_race_to_another_batch_is_still_applied():
    """E11000 only proves the document exists: the op is re-issued as an update and applies if its batch is new."""
    coll = _documents.hourly_collection()
    coll.bulk([_documents.counter_op("b1", "2026010100", "signup", "/a", 2)])  # another batch inserted first

    class LostRace:
        def __init__(self):
            self.calls = 0

        def bulk(self, ops, ordered=False):
            self.calls += 1
            if self.calls == 1:  # what the server answers when a racing insert took the _id
                return mongo.BulkResult(duplicates=list(range(len(ops))))
            return coll.bulk(ops, ordered=ordered)

    stats = _documents.WriteStats()
    _documents.write(LostRace(), [_documents.counter_op("b2", "2026010100", "signup", "/a", 3)], stats)
    assert (stats.round_trips, stats.applied) == (2, 1)
    assert hourly_total() == 5


def test_command_with_redis_down_says_so_and_exits_with_status_1(redis_down, clock):
    """Not '-1 batch(es) stay pending': the pending count cannot be read, and the message says why."""
    out = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("sync_analytics", stdout=out)
    message = str(raised.value)
    assert raised.value.returncode == 1
    assert "-1" not in message and "RedisUnavailable" in message and "Redis does not answer" in message
    assert "nothing is lost" in message
    assert "Moved" not in out.getvalue()  # nothing moved: no misleading summary
    assert analytics.sync().pending_left is None
