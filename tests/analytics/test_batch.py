"""Analytics batching (ANALYTICS_BATCH_SECONDS): events summed in-process, written in one script call per
interval and process, exactly once through the lost-reply protocol, flushed at exit; a killed process loses
at most its unwritten interval."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hotcache import analytics
from hotcache import clock as hc_clock
from hotcache.analytics import _batch, _hot
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.testing import count_redis
from tests.analytics.fixtures import (  # noqa: F401
    LostReplyProxy,
    _empty_fallback_buffer,
    close_hours,
    hourly_total,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def batching(hotcache_config):
    hotcache_config(ANALYTICS_BATCH_SECONDS=60)
    yield
    _batch.batch.stop()


def _hour_counts(raw_redis, key_prefix, event=None):
    hour = hc_clock.utcnow().strftime("%Y%m%d%H")
    raw = {}  # every bucket of the layout (one with KEY_BUCKETS=1)
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{analytics:*}}:h:{hour}"):
        raw.update(raw_redis.hgetall(key))
    return {k.decode(): int(v) for k, v in raw.items() if event is None or k.decode().startswith(f"{event}\t")}


def _synced_total(clock):
    analytics.flush_fallback()
    close_hours(clock)
    result = analytics.sync()
    assert not result.error
    return hourly_total()


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_events_are_summed_and_written_in_one_script_call_per_interval(batching, raw_redis, key_prefix, clock):
    raw_redis.script_load(_hot.TRACK.body)
    redis_backend.call("t", lambda r: r.ping())  # the connection's set-up is not part of what is measured
    with count_redis() as c:
        for i in range(30):
            assert analytics.track("view", path=f"/p{i % 3}", visitor_id=f"v{i % 10}") == "batched"
        assert analytics.track("signup", path="/join", count=5) == "batched"
    assert c.commands == 0  # nothing sent before the interval is over
    assert _hour_counts(raw_redis, key_prefix) == {}
    clock.advance(60)
    with count_redis() as c:
        assert analytics.track("view", path="/p0", visitor_id="v0") == "batched"  # the interval is over: written
    assert c.by_feature["analytics"] == 1 and c.round_trips == 1  # one script call for 36 events
    assert _hour_counts(raw_redis, key_prefix) == {
        "view\t/p0": 11,
        "view\t/p1": 10,
        "view\t/p2": 10,
        "signup\t/join": 5,
    }
    assert c.events["analytics:tracked"] == 36
    # The next interval, the same traffic: billed per counter and per event with visitors, not per event:
    # EVALSHA, 4 HINCRBY, the view event's PFADD, the writer's SET (the view event's marks of this hour are known
    # from the first interval's reply: no HINCRBY of them).
    for i in range(36):
        analytics.track("view", path=f"/p{i % 3}", visitor_id=f"w{i % 10}")
    analytics.track("signup", path="/join")
    clock.advance(60)
    with count_redis() as c:
        assert analytics.flush_batch() == 37
    assert c.billed_by_feature["analytics"] == 7
    report = analytics.report(hc_clock.utcnow().replace(minute=0, second=0, microsecond=0), hc_clock.utcnow())
    # Distinct visitors: each interval's are summed in-process, then added to the day's HyperLogLog.
    assert [n for e, _, n in report.visitors if e == "view"] == [20]
    assert _synced_total(clock) == 73


def test_an_empty_interval_sends_nothing(batching, clock):
    with count_redis() as c:
        assert analytics.flush_batch() == 0
    assert c.commands == 0


def test_the_batch_is_written_at_exit_by_the_flush_hook(batching, raw_redis, key_prefix, clock):
    for _ in range(7):
        analytics.track("leave", path="/bye")
    _hot._at_exit()  # what atexit (and the Celery / gunicorn hooks, through flush_batch) run
    assert _hour_counts(raw_redis, key_prefix, "leave") == {"leave\t/bye": 7}


def test_redis_down_sends_the_batch_to_the_outage_buffer(batching, redis_proxy, clock):
    for _ in range(4):
        analytics.track("view", path="/a")
    redis_proxy.down()
    assert analytics.flush_batch() == 4
    redis_proxy.up()
    redis_backend.reset()
    assert _synced_total(clock) == 4  # MongoDB got them through the outage buffer: none lost, none doubled


@pytest.mark.parametrize("mode", ["apply", "drop"])
def test_a_batch_whose_reply_was_lost_counts_exactly_once(
    mode, batching, lost_reply_proxy, raw_redis, key_prefix, clock
):
    raw_redis.script_load(_hot.TRACK.body)  # EVALSHA is then the one command that carries the script
    for _ in range(3):
        analytics.track("buy", path="/a")
    analytics.flush_batch()
    for _ in range(5):
        analytics.track("buy", path="/a", visitor_id="x")
    lost_reply_proxy.arm(_hot.TRACK.sha.encode(), mode)
    with count_redis() as c:
        analytics.flush_batch()  # Redis ran it or never saw it; the process cannot tell
        assert lost_reply_proxy.lost == [mode]
        assert _hot.doubts  # the batch waits as the batch writer's doubt, not in the outage buffer
        analytics.track("buy", path="/a")
        clock.advance(float(hotcache_settings.HEALTH_COOLDOWN) + 1)
        redis_backend.call("t", lambda r: r.ping())  # the gate probes again on a fresh connection
        assert analytics.flush_batch() == 1  # settles the doubt first, then writes the new batch
    assert not _hot.doubts
    settled = "in_doubt_applied" if mode == "apply" else "in_doubt_replayed"
    assert c.events[f"analytics:{settled}"] == 5
    assert _hour_counts(raw_redis, key_prefix, "buy") == {"buy\t/a": 9}
    assert _synced_total(clock) == 9


def test_a_forked_child_does_not_inherit_the_batch(batching, clock):
    analytics.track("view", path="/a")
    pid = os.fork()
    if pid == 0:  # the child: its batch starts empty, so the parent's event is written once (by the parent)
        os._exit(0 if len(_batch.batch) == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(_batch.batch) == 1


def _child(mode, interval, n):
    return subprocess.Popen(
        [sys.executable, "-m", "tests.analytics.batch_child", mode, str(interval), str(n)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"},
    )


def _child_counts(raw_redis, key_prefix):
    found = 0
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{analytics:*}}:h:*"):
        found += sum(int(v) for k, v in raw_redis.hgetall(key).items() if k.startswith(b"batch_child\t"))
    return found


def test_a_process_that_exits_normally_writes_its_batch(raw_redis, key_prefix):
    proc = _child("exit", 3600, 500)  # an interval far longer than the process lives
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert "tracked=500 unwritten=500" in out  # nothing was written before exit...
    assert _child_counts(raw_redis, key_prefix) == 500  # ...and everything at exit


def test_a_killed_process_loses_at_most_its_unwritten_interval(raw_redis, key_prefix):
    """The loss bound, measured: a process tracking as fast as it can with a 0.2 s interval is SIGKILLed; what
    Redis lacks is exactly the batch it had not written, at most one interval (or one full batch) of events."""
    proc = _child("kill", 0.2, 20_000)
    line = proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    tracked, unwritten = (int(part.split("=")[1]) for part in line.split())
    counted = _child_counts(raw_redis, key_prefix)
    print(f"batch loss on SIGKILL: tracked {tracked}, in Redis {counted}, lost {tracked - counted} (interval 0.2 s)")
    assert counted == tracked - unwritten  # intervals written exactly once; only the unwritten batch is lost
    assert 0 < counted  # earlier intervals were written while the process ran
    assert unwritten < tracked


@pytest.mark.usefixtures("single_tag_layout")  # caps apply per bucket; names {analytics:a} keys
def test_a_known_hours_marks_are_not_sent_again_and_an_overflowed_event_stays_in_overflow(
    raw_redis, hotcache_config, clock
):
    """The writer learns each (hour, event)'s marks parity from the reply (issue 17: 1 billed command less per
    event with visitors): the event's own HyperLogLog (even) or, past the day's event cap, the overflow one (odd),
    for the rest of the hour, whichever process decided it first."""
    from hotcache.analytics._events import OVERFLOW
    from hotcache.analytics._keys import hll_key

    hotcache_config(ANALYTICS_MAX_EVENTS_PER_DAY=1, ANALYTICS_BATCH_SECONDS=0)
    day = hc_clock.utcnow().strftime("%Y%m%d")
    assert analytics.track("first", path="/a", visitor_id="v1") == "redis"  # the day's one event with visitors
    with count_redis() as c:
        assert analytics.track("second", path="/a", visitor_id="v2") == "redis"  # past the cap: overflow
    assert c.events["analytics:visitor_overflow"] == 1
    with count_redis() as c:
        assert analytics.track("second", path="/a", visitor_id="v3") == "redis"
        assert analytics.track("first", path="/a", visitor_id="v4") == "redis"
    # Each: EVALSHA, HINCRBY (counter), PFADD, SET: the marks' HINCRBY is not sent again.
    assert c.billed_by_feature["analytics"] == 8
    assert c.events["analytics:visitor_overflow"] == 1  # "second" stayed in overflow
    assert not raw_redis.exists(hll_key(day, "second"))
    assert raw_redis.pfcount(hll_key(day, OVERFLOW)) == 2 and raw_redis.pfcount(hll_key(day, "first")) == 2


@pytest.mark.usefixtures("single_tag_layout")  # caps apply per bucket; names {analytics:a} keys
def test_a_batch_of_many_new_fields_fills_an_hour_exactly_as_one_call_per_event(
    raw_redis, key_prefix, hotcache_config, clock
):
    """A batch reads an hour's field count once and renews its TTL and index once (issue 17: not once per new
    field); the cap and its overflow fields come out exactly as when the same events are written one per call."""
    hotcache_config(ANALYTICS_MAX_COUNTERS_PER_HOUR=3, ANALYTICS_BATCH_SECONDS=0)
    traffic = [(f"e{i % 120}", f"/p{i % 7}") for i in range(400)]  # 120 events: past the cap and its slack of 100
    for event, path in traffic:
        assert analytics.track(event, path=path) == "redis"
    one_per_call = _hour_counts(raw_redis, key_prefix)
    clock.advance(3600)
    hotcache_config(ANALYTICS_MAX_COUNTERS_PER_HOUR=3, ANALYTICS_BATCH_SECONDS=60)
    try:
        for event, path in traffic:
            assert analytics.track(event, path=path) == "batched"
        with count_redis() as c:
            assert analytics.flush_batch() == 400
    finally:
        _batch.batch.stop()
    assert c.events["analytics:tracked"] == 400
    assert _hour_counts(raw_redis, key_prefix) == one_per_call
    assert sum(one_per_call.values()) == 400 and len(one_per_call) == 3 + 100 + 1
    hour = hc_clock.utcnow().strftime("%Y%m%d%H")
    assert 0 < raw_redis.ttl(f"{key_prefix}:{{analytics:a}}:h:{hour}")
    assert raw_redis.zscore(f"{key_prefix}:{{analytics:a}}:hours", hour) is not None
