"""Exactly once at the reply-lost edge: a track script Redis received but whose reply never arrived is neither
counted twice (applied, then buffered) nor lost (not applied, then dropped); same for the sync's claim and release."""

import datetime as dt
import threading

import pytest

from hotcache import analytics
from hotcache import clock as hc_clock
from hotcache.analytics import _hot, _sync
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.testing import count_redis
from tests.analytics.fixtures import LostReplyProxy, _empty_fallback_buffer, close_hours, hourly_total  # noqa: F401
from tests.support.redis_cluster import warm_every_node

# MongoDB-facing contracts: each test runs on the stand-in and on a real server ([standin] / [real]).
pytestmark = pytest.mark.mongo_contract


def _hour_total(raw_redis, key_prefix):
    """The current hour's counts in Redis, in every bucket of the layout (one with KEY_BUCKETS=1)."""
    hour = hc_clock.utcnow().strftime("%Y%m%d%H")
    keys = raw_redis.scan_iter(match=f"{key_prefix}:{{analytics:*}}:h:{hour}")
    return sum(int(v) for k in keys for v in raw_redis.hgetall(k).values())


def _reopen_gate(clock):
    """The lost reply opened the health gate; let it probe again and open a fresh connection (not counted)."""
    clock.advance(float(hotcache_settings.HEALTH_COOLDOWN) + 1)
    redis_backend.call("t", lambda r: r.ping())


def _track_sha(raw_redis):
    raw_redis.script_load(_hot.TRACK.body)  # EVALSHA is then the one command that carries the script
    return _hot.TRACK.sha.encode()


def _synced_total(clock):
    analytics.flush_fallback()
    close_hours(clock)
    result = analytics.sync()
    assert not result.error
    return hourly_total()


def test_an_applied_track_whose_reply_was_lost_is_not_counted_again(lost_reply_proxy, raw_redis, key_prefix, clock):
    sha = _track_sha(raw_redis)
    for _ in range(3):
        assert analytics.track("signup", path="/a") == "redis"
    lost_reply_proxy.arm(sha, "apply")
    with count_redis() as c:
        assert analytics.track("signup", path="/a") == "in_doubt"
        assert _hour_total(raw_redis, key_prefix) == 4  # Redis counted it; the client could not know
        assert analytics.track("signup", path="/b") == "fallback"  # gate open: the outage path, the doubt stays
        assert _hot.doubts
        _reopen_gate(clock)
        assert analytics.track("signup", path="/c") == "redis"  # settles the doubt first: applied, dropped
    assert not _hot.doubts
    assert (c.events["analytics:in_doubt"], c.events["analytics:in_doubt_applied"]) == (1, 1)
    assert c.events["analytics:in_doubt_replayed"] == 0
    assert c.events["analytics:fallback"] == 1
    assert _synced_total(clock) == 6  # six track calls: not seven


def test_a_track_lost_before_redis_applied_it_is_replayed(lost_reply_proxy, raw_redis, key_prefix, clock):
    sha = _track_sha(raw_redis)
    assert analytics.track("signup", path="/a") == "redis"
    lost_reply_proxy.arm(sha, "drop")
    with count_redis() as c:
        assert analytics.track("signup", path="/a", count=3) == "in_doubt"
        assert _hour_total(raw_redis, key_prefix) == 1  # never reached Redis
        _reopen_gate(clock)
        assert analytics.track("signup", path="/b") == "redis"
    assert (c.events["analytics:in_doubt"], c.events["analytics:in_doubt_replayed"]) == (3, 3)
    assert c.events["analytics:in_doubt_applied"] == 0
    assert _hour_total(raw_redis, key_prefix) == 5
    assert _synced_total(clock) == 5


def test_a_doubt_is_replayed_into_its_own_hour(lost_reply_proxy, raw_redis, key_prefix, clock):
    sha = _track_sha(raw_redis)
    lost_reply_proxy.arm(sha, "drop")
    assert analytics.track("signup", path="/a") == "in_doubt"
    hour = hc_clock.utcnow().replace(minute=0, second=0, microsecond=0)
    clock.advance(3600)  # Redis answers again in the next hour
    _reopen_gate(clock)
    assert analytics.track("signup", path="/a") == "redis"
    rep = analytics.report(hour, hour + dt.timedelta(hours=2))
    assert [n for _, n in rep.hourly] == [1, 1]


def test_settling_a_doubt_costs_one_extra_round_trip_once_and_no_mongodb(lost_reply_proxy, raw_redis, clock):
    sha = _track_sha(raw_redis)
    analytics.track("warmup", path="/")
    warm_every_node()  # on a cluster "signup" may live on another master than "warmup"
    with count_redis() as c:
        analytics.track("signup", path="/a")
    assert (c.commands, c.round_trips, c.mongo_ops) == (1, 1, 0)  # the normal path, token recorded in the script
    lost_reply_proxy.arm(sha, "apply")
    assert analytics.track("signup", path="/a") == "in_doubt"
    _reopen_gate(clock)
    # On a cluster the lost reply closed the pooled connection to that node: its reconnection handshake (HELLO,
    # CLIENT SETINFO...: 5 round trips) is not the settling's cost. No analytics call: the doubt stays.
    warm_every_node()
    with count_redis() as c:
        assert analytics.track("signup", path="/a") == "redis"
    assert (c.commands, c.round_trips, c.mongo_ops) == (2, 2, 0)  # settle the doubt, then this event
    with count_redis() as c:
        assert analytics.track("signup", path="/a") == "redis"
    assert (c.commands, c.round_trips, c.mongo_ops) == (1, 1, 0)


def test_a_refused_connection_is_not_a_doubt(redis_down, clock):
    with count_redis() as c:
        assert analytics.track("signup") == "fallback"
    assert not _hot.doubts and c.events["analytics:in_doubt"] == 0


def test_two_threads_with_doubts_each_settle_their_own(lost_reply_proxy, raw_redis, key_prefix, clock):
    sha = _track_sha(raw_redis)
    warmed, first_done = threading.Barrier(3), threading.Barrier(3)
    settle = [threading.Event(), threading.Event()]
    settled = [threading.Event(), threading.Event()]
    outcomes: dict[int, list[str]] = {0: [], 1: []}

    def writer(i):
        analytics.track("signup", path=f"/t{i}")  # warm this thread's own connection
        warmed.wait(timeout=10)
        warmed.wait(timeout=10)  # the proxy is armed
        outcomes[i].append(analytics.track("signup", path=f"/t{i}"))
        first_done.wait(timeout=10)
        settle[i].wait(timeout=10)
        outcomes[i].append(analytics.track("signup", path=f"/t{i}"))
        settled[i].set()

    with count_redis() as c:
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        warmed.wait(timeout=10)
        lost_reply_proxy.arm(sha, "apply", "drop", together=2)  # both scripts in flight when the replies are lost
        warmed.wait(timeout=10)
        first_done.wait(timeout=10)
        assert len(_hot.doubts) == 2  # one per writer
        _reopen_gate(clock)
        for i in range(2):  # one after the other: each thread settles only its own doubt
            settle[i].set()
            assert settled[i].wait(timeout=10)
            assert len(_hot.doubts) == 1 - i
        for t in threads:
            t.join(timeout=10)
    assert outcomes == {0: ["in_doubt", "redis"], 1: ["in_doubt", "redis"]}
    assert sorted(lost_reply_proxy.lost) == ["apply", "drop"]
    assert (c.events["analytics:in_doubt_applied"], c.events["analytics:in_doubt_replayed"]) == (1, 1)
    assert _hour_total(raw_redis, key_prefix) == 6  # three calls per thread
    assert _synced_total(clock) == 6


def test_a_doubt_older_than_the_retention_is_not_counted(lost_reply_proxy, raw_redis, hotcache_config, clock):
    hotcache_config(ANALYTICS_RETENTION_HOURS=1)
    lost_reply_proxy.arm(_track_sha(raw_redis), "drop")
    assert analytics.track("signup") == "in_doubt"
    clock.advance(3600)
    _reopen_gate(clock)
    with count_redis() as c:
        assert analytics.track("signup") == "redis"
    assert c.events["analytics:in_doubt_expired"] == 1 and not _hot.doubts


# --- the sync at the same edge -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["apply", "drop"])
@pytest.mark.parametrize("step", ["claim", "release"])
def test_a_sync_whose_claim_or_release_reply_was_lost_leaves_exact_totals_after_a_rerun(
    lost_reply_proxy, raw_redis, hotcache_config, clock, step, mode
):
    hotcache_config(ANALYTICS_SYNC_LOCK_TIMEOUT=0)  # the failed run cannot unlock (gate open); no lock needed
    raw_redis.script_load(_sync.CLAIM.body)
    raw_redis.script_load(_sync._RELEASE.body)  # the release (DEL + SREM, atomically) is a script too
    total = 0
    for p in range(5):
        analytics.track("page_view", path=f"/p{p}", count=p + 1)
        total += p + 1
    close_hours(clock)
    needle = (_sync.CLAIM if step == "claim" else _sync._RELEASE).sha.encode()
    lost_reply_proxy.arm(needle, mode)
    first = analytics.sync()
    assert first.error and lost_reply_proxy.lost == [mode]
    assert hourly_total() == (total if step == "release" else 0)
    _reopen_gate(clock)
    second = analytics.sync()
    assert not second.error and second.pending_left == 0
    assert hourly_total() == total
    assert analytics.sync().counters == 0  # nothing left anywhere
    assert hourly_total() == total
