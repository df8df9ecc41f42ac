"""Server-side faults through the real server's own fail points (``configureFailPoint failCommand``), aimed at
hotcache's connections only, and a server restarted from its data directory in the middle of a run.

What the stand-in's fault injection (``hotcache.testing.mongo_down``) cannot show: pymongo's retryable
writes (a write sent twice is applied once), a write the server applies after the client gave up on it,
a primary that refuses writes (NotWritablePrimary, 10107), and a server that answers too slowly.
"""

from __future__ import annotations

import collections
import threading
import time

import pytest
from django.core.management import CommandError, call_command

from hotcache import analytics, apikeys, mfa, workbench
from hotcache.backends import mongo
from hotcache.exceptions import BackendUnavailable, MongoUnavailable

pytestmark = [pytest.mark.django_db(databases=[]), pytest.mark.timeout(120)]

RETRYABLE = ["RetryableWriteError"]
SOCKET_TIMEOUT_MS = 300
BLOCK_MS = 3 * SOCKET_TIMEOUT_MS  # a blocked command outlives the client's socket timeout, then runs


def _usage(real_mongo, key_id):
    return real_mongo.db()["api_key_usage"].find_one({"key_id": key_id}) or {}


def _after_blocked_commands_ran() -> None:
    """A command the client gave up on still runs on the server once its block ends. The server shows no
    such command as running (its currentOp lists every connection's last command), so wait out the block
    plus a margin before asserting that it changed nothing more. (Waits on the server's timer; nothing to
    synchronise with.)"""
    time.sleep(BLOCK_MS / 1000 + 0.5)


def _eventually(read, expected, timeout: float = 10.0):
    """Poll ``read()`` until it returns ``expected`` (a write the server applies late); return the last value."""
    deadline = time.monotonic() + timeout
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


# --- a write whose reply is lost is applied once -------------------------------------------------------


@pytest.mark.parametrize("fault", ["closed_before_running", "error_after_running", "reply_lost_after_running"])
def test_an_api_key_use_is_counted_once_when_the_reply_of_its_write_is_lost(
    fault, real_mongo, redis_down, hotcache_config
):
    """Redis down: each check is a findAndModify $inc. The fault hits it once; the driver retries it (same
    transaction number) and the server applies it once, whether the first attempt ran or not."""
    hotcache_config(MONGO_SOCKET_TIMEOUT_MS=SOCKET_TIMEOUT_MS)
    key = apikeys.create("acme", daily_limit=10)
    assert apikeys.check(key.raw_key).allowed  # warm: indexes and the day's document exist
    faults = {
        "closed_before_running": {"close_connection": True},
        # Applied, then not confirmed (WriteConcernTimeout, labelled retryable): the retry finds it done.
        "error_after_running": {"write_concern_error": {"code": 64, "errmsg": "waiting for replication timed out"},
                                "error_labels": RETRYABLE},
        "reply_lost_after_running": {"block_ms": BLOCK_MS},  # runs after the client timed out
    }
    with real_mongo.fail_point(["findAndModify"], times=1, **faults[fault]):
        usage = apikeys.check(key.raw_key)
    assert usage.allowed and usage.used_today == 2
    if fault == "reply_lost_after_running":
        _after_blocked_commands_ran()
    assert _usage(real_mongo, key.key_id)["fallback"] == 2


@pytest.mark.parametrize("monitoring", ["poll", "stream"])
def test_a_write_applied_but_not_confirmed_is_retried_once_or_unavailable_and_maybe_applied(
    real_mongo, redis_down, hotcache_config, monitoring
):
    """ShutdownInProgress as a write concern error: the primary applied the $inc, then said it is going away.
    pymongo marks the server Unknown and retries once, with the same transaction number (never applied
    twice). With poll monitoring (hotcache's default) its immediate re-check finds the server again and the
    retry answers: the use is allowed, counted once. With streaming monitoring the retry finds no server
    within the selection timeout: MongoUnavailable(maybe_applied=True) (before: MongoWriteError, a 500 from
    require_api_key), and the use still counts once."""
    hotcache_config(MONGO_SERVER_SELECTION_TIMEOUT_MS=300, MONGO_SERVER_MONITORING_MODE=monitoring)
    key = apikeys.create("acme")
    assert apikeys.check(key.raw_key).allowed
    with real_mongo.fail_point(["findAndModify"], times=1, error_labels=RETRYABLE,
                               write_concern_error={"code": 91, "errmsg": "shutting down"}):
        if monitoring == "poll":
            assert apikeys.check(key.raw_key).used_today == 2
        else:
            with pytest.raises(MongoUnavailable) as exc:
                apikeys.check(key.raw_key)
            assert exc.value.maybe_applied
    assert _usage(real_mongo, key.key_id)["fallback"] == 2


def test_a_bulk_write_not_confirmed_is_unavailable_and_maybe_applied(real_mongo):
    coll = mongo.collection("c", feature="t")
    with real_mongo.fail_point(["update"], times=1, write_concern_error={"code": 100, "errmsg": "unsatisfiable"}):
        with pytest.raises(MongoUnavailable) as exc:
            coll.bulk([mongo.Update({"_id": i}, {"$inc": {"n": 1}}, upsert=True) for i in range(3)])
    assert exc.value.maybe_applied
    assert real_mongo.db()["c"].count_documents({"n": 1}) == 3


def test_a_write_the_server_runs_after_both_attempts_timed_out_is_applied_once(
    real_mongo, redis_down, hotcache_config
):
    """A slow server: both attempts of the use's $inc time out (MongoUnavailable, the request is refused),
    then the server runs the blocked commands. They carry one transaction number: the use counts once."""
    hotcache_config(MONGO_SOCKET_TIMEOUT_MS=SOCKET_TIMEOUT_MS)
    key = apikeys.create("acme")
    assert apikeys.check(key.raw_key).allowed
    with real_mongo.fail_point(["findAndModify"], times=2, block_ms=BLOCK_MS):
        with pytest.raises(MongoUnavailable) as exc:
            apikeys.check(key.raw_key)
    assert exc.value.maybe_applied, "sent and timed out: the server may (and here will) apply it"
    assert _eventually(lambda: _usage(real_mongo, key.key_id)["fallback"], 2) == 2
    _after_blocked_commands_ran()
    assert _usage(real_mongo, key.key_id)["fallback"] == 2, "the refused request's use was counted, once"


@pytest.mark.parametrize("attempts_failing", [1, 2])
def test_an_analytics_fallback_flush_is_counted_once_across_lost_replies(
    attempts_failing, real_mongo, redis_down, hotcache_config
):
    """Redis down: events go to the process's buffer, flushed with one bulk write under a flush id. The
    server runs the bulk, the reply is lost; with one attempt lost the driver's retry succeeds, with both
    lost the flush fails and hotcache retries it later with the same id. Either way: counted once."""
    hotcache_config(MONGO_SOCKET_TIMEOUT_MS=SOCKET_TIMEOUT_MS, ANALYTICS_FALLBACK_FLUSH_INTERVAL=3600)
    for i in range(30):
        assert analytics.track("fp_event", path=f"/p/{i % 3}") == "fallback"
    with real_mongo.fail_point(["update"], times=attempts_failing, block_ms=BLOCK_MS):
        written = analytics.flush_fallback()
    _after_blocked_commands_ran()
    if attempts_failing == 2:
        assert written == 0, "unacknowledged: kept for retry"
        assert analytics.flush_fallback() == 3, "the retry, same flush id: matched nothing new or applied once"
    else:
        assert written == 3
    docs = list(real_mongo.db()["analytics_hourly"].find({}))
    assert sorted(d["count"] for d in docs) == [10, 10, 10]
    assert all(len(d["flushes"]) == 1 for d in docs)


# --- a primary that refuses writes -----------------------------------------------------------------------


def _fast_rediscovery(real_mongo, hotcache_config):
    """NotWritablePrimary makes pymongo mark the server Unknown until its monitor checks it again: every
    heartbeatFrequencyMS (10 s by default; a real step-down answers the streaming check at once, a fail
    point does not). The tests check every 0.5 s so the next run does not wait for that."""
    hotcache_config(MONGO_URL=f"{real_mongo.url}?heartbeatFrequencyMS=500")


def test_not_writable_primary_during_a_sync_fails_the_run_and_the_next_is_exact(
    real_mongo, hotcache_config, raw_redis, key_prefix
):
    _fast_rediscovery(real_mongo, hotcache_config)
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{analytics:*"):  # counters other tests left this hour
        raw_redis.unlink(key)
    sent = collections.Counter()
    for i in range(120):
        analytics.track(f"nwp_{i % 2}", path=f"/p/{i % 40}")
        sent[f"nwp_{i % 2}"] += 1
    with real_mongo.fail_point(["update"], times=None, error_code=10107):
        result = analytics.sync(include_current_hour=True)
        assert "MongoUnavailable" in result.error and result.pending_left >= 1
        with pytest.raises(CommandError):
            call_command("sync_analytics", include_current_hour=True)
    assert real_mongo.db()["analytics_hourly"].count_documents({}) == 0
    result = analytics.sync(include_current_hour=True)
    assert not result.error and result.pending_left == 0 and result.events == 120
    totals = collections.Counter()
    for doc in real_mongo.db()["analytics_hourly"].find({}):
        totals[doc["event"]] += doc["count"]
    assert totals == sent


def test_not_writable_primary_during_a_persist_keeps_the_sessions_for_the_next_run(real_mongo, hotcache_config):
    _fast_rediscovery(real_mongo, hotcache_config)
    hotcache_config(WORKBENCH_DURABLE_SAVES=False)
    # Session ids of this test's own: the run's Redis prefix is shared, and another test may have left an "s1".
    for i in range(12):
        workbench.save(f"nwp-s{i}", {"i": i}, owner="team")
        workbench.end(f"nwp-s{i}")
    with real_mongo.fail_point(["insert", "update"], times=None, error_code=10107):
        result = workbench.persist()
        assert result.errors and result.persisted == 0
    result = workbench.persist()
    assert not result.errors and result.ended >= 12
    history = real_mongo.db()["workbench_history"].find({"session_id": {"$regex": "^nwp-"}})
    ids = sorted(d["session_id"] for d in history)
    assert ids == sorted(f"nwp-s{i}" for i in range(12))


# --- a server slower than MONGO_SOCKET_TIMEOUT_MS -------------------------------------------------------

# pymongo retries a read or a retryable write once, so a call fails after about twice the socket timeout.
SLOW_BOUND = 2 * SOCKET_TIMEOUT_MS / 1000 + 1.5  # + connection setup on a loaded machine


@pytest.fixture
def slow_mongo(real_mongo, redis_down, hotcache_config):
    """Redis down and MongoDB answering hotcache's commands only after 3 x MONGO_SOCKET_TIMEOUT_MS."""
    hotcache_config(MONGO_SOCKET_TIMEOUT_MS=SOCKET_TIMEOUT_MS)
    commands = ["find", "findAndModify", "update", "insert", "delete"]

    class Slow:
        def __enter__(self):
            self._cm = real_mongo.fail_point(commands, times=None, block_ms=BLOCK_MS)
            self._cm.__enter__()
            return self

        def __exit__(self, *exc):
            self._cm.__exit__(*exc)
            _after_blocked_commands_ran()

    return Slow()


def _timed(fn, *args, **kwargs):
    started = time.monotonic()
    try:
        return fn(*args, **kwargs), time.monotonic() - started
    except BackendUnavailable as exc:
        return exc, time.monotonic() - started


def test_a_slow_server_fails_mfa_closed_within_the_timeout(slow_mongo, real_mongo):
    code = mfa.issue("alice")
    with slow_mongo:
        result, took = _timed(mfa.verify, "alice", code)
        assert result.reason == mfa.Reason.UNAVAILABLE and not result.ok
        assert took < SLOW_BOUND
        raised, took = _timed(mfa.issue, "bob")
        assert isinstance(raised, mfa.MfaUnavailable) and took < SLOW_BOUND
    assert mfa.verify("alice", code).ok, "the code survives: at most the timed-out attempt was counted"


def test_a_slow_server_refuses_api_keys_within_the_timeout(slow_mongo, real_mongo):
    key = apikeys.create("acme", daily_limit=5)
    with slow_mongo:
        raised, took = _timed(apikeys.check, key.raw_key)
        assert isinstance(raised, MongoUnavailable) and took < SLOW_BOUND
    assert apikeys.check(key.raw_key).allowed


def test_a_slow_server_makes_workbench_unavailable_within_the_timeout(slow_mongo, real_mongo):
    assert workbench.save("wb", {"n": 1}, owner="team") == 1
    with slow_mongo:
        raised, took = _timed(workbench.save, "wb", {"n": 2}, expected_version=1)
        assert isinstance(raised, BackendUnavailable) and took < SLOW_BOUND
        raised, took = _timed(workbench.load, "wb")
        assert isinstance(raised, BackendUnavailable) and took < SLOW_BOUND
    # The timed-out save reached the server, which ran it once after the client gave up.
    assert workbench.load("wb").state == {"n": 2} and workbench.load("wb").version == 2


def test_a_slow_server_keeps_analytics_events_buffered_and_flushes_them_once(slow_mongo, real_mongo, hotcache_config):
    hotcache_config(ANALYTICS_FALLBACK_FLUSH_INTERVAL=3600)
    with slow_mongo:
        results, took = _timed(lambda: [analytics.track("slow", path="/") for _ in range(5)])
        assert results == ["fallback"] * 5 and took < 0.5, "tracking never waits for MongoDB"
        written, took = _timed(analytics.flush_fallback)
        assert written == 0 and took < SLOW_BOUND
    analytics.flush_fallback()
    assert real_mongo.db()["analytics_hourly"].find_one({"event": "slow"})["count"] == 5


# --- a server restarted from its data directory ----------------------------------------------------------


def test_a_server_restarted_mid_run_loses_nothing_acknowledged(restartable_mongo, redis_down, hotcache_config):
    """Redis down, so every save and API key use is on MongoDB. A worker thread keeps working while the
    server stops (cleanly) and starts again from its data directory; calls during the gap fail; afterwards
    everything that was acknowledged is there, and nothing unacknowledged was applied twice."""
    hotcache_config(MONGO_SERVER_SELECTION_TIMEOUT_MS=500)
    key = apikeys.create("acme")
    start_version = workbench.save("restart", {"n": 0}, owner="team")
    acked = collections.Counter()
    failed = collections.Counter()
    before, after, done = threading.Event(), threading.Event(), threading.Event()
    restarted = threading.Event()
    saves_at_restart = [0]
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            while not done.is_set():
                try:
                    current = workbench.load("restart")
                    workbench.save("restart", {"n": current.state["n"] + 1}, expected_version=current.version)
                    acked["saves"] += 1
                    acked["uses"] += apikeys.check(key.raw_key).allowed
                except workbench.Conflict:
                    failed["conflicts"] += 1  # a save applied whose reply was lost: reloaded next round
                except BackendUnavailable:
                    failed["unavailable"] += 1
                if acked["saves"] >= 5:
                    before.set()
                if restarted.is_set() and acked["saves"] >= saves_at_restart[0] + 5:
                    after.set()  # five more acknowledged rounds on the restarted server
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            before.set()
            after.set()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert before.wait(60)
        saves_before_restart = acked["saves"]
        old_pid = restartable_mongo.server.pid
        restartable_mongo.restart()
        assert restartable_mongo.server.pid != old_pid  # a new server process, reopened from the data directory
        saves_at_restart[0] = acked["saves"]
        restarted.set()
        assert after.wait(60), (acked, failed)
    finally:
        done.set()
        thread.join(60)
    assert not errors, errors
    # Calls made while the server was away failed (or, if the restart was quicker than the driver's server
    # selection, waited it out); either way the worker went on acknowledging saves on the restarted server.
    assert acked["saves"] > saves_before_restart
    session = workbench.load("restart")
    # Every acknowledged save is there; a save cut off by the restart may have been applied too (then the
    # next expected_version save hit a Conflict and reloaded), never twice.
    assert acked["saves"] <= session.state["n"] <= acked["saves"] + failed["unavailable"] + failed["conflicts"]
    assert session.version == start_version + session.state["n"]
    usage = restartable_mongo.db()["api_key_usage"].find_one({"key_id": key.key_id})
    assert acked["uses"] <= usage["fallback"] <= acked["uses"] + failed["unavailable"]
    assert mongo.collection("workbench_active", feature="t").count({"_id": "restart"}) == 1
