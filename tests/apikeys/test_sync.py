"""API keys usage sync on the real Redis: its cost follows the keys used in the window, not all keys."""

from __future__ import annotations

import pytest

from hotcache import apikeys, reports
from hotcache import clock as hotcache_clock
from hotcache.apikeys import _records, _recovery
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.exceptions import RedisUnavailable
from hotcache.reports.features import apikeys as apikeys_page
from hotcache.testing import count_redis, new_process
from tests.support.targets import pipelined

# MongoDB-facing contracts: each test runs on the stand-in and on a real server ([standin] / [real]).
pytestmark = pytest.mark.mongo_contract


def _usage_docs():
    docs = mongo.collection(apikeys.USAGE_COLLECTION, feature="test").find({})
    return sorted((d["key_id"], d["day"], d["redis"], d["fallback"]) for d in docs)


def _make_keys(n, used, uses=3):
    made = [apikeys.create(f"owner{i % 7}", name=f"k{i}") for i in range(n)]
    for new in made[:used]:
        for _ in range(uses):
            apikeys.check(new.raw_key)
    return made


def _warm_sync():
    """A sync with nothing to do: index creation and the connection handshake, so counts below are exact."""
    apikeys.sync_usage()


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_sync_cost_follows_keys_used_not_keys_stored():
    _warm_sync()
    made = _make_keys(200, used=5)
    with count_redis() as c:
        result = apikeys.sync_usage()
    assert (result.keys, result.written, result.bases_pushed) == (5, 5, 0)
    # Redis: SSCAN today + yesterday (1 round trip), one GET per used key (1 round trip; per master on a cluster).
    assert c.commands == 2 + 5 and c.round_trips in pipelined(2)
    # MongoDB: revoked-in-window query, one bulk write, today's MongoDB-counted uses.
    assert c.mongo_ops == 3
    assert {(k, r) for k, _, r, _ in _usage_docs()} == {(m.key_id, 3) for m in made[:5]}


def test_sync_cost_does_not_change_with_more_unused_keys():
    _warm_sync()
    made = _make_keys(20, used=5)
    with count_redis() as few:
        apikeys.sync_usage()
    _make_keys(180, used=0)
    with count_redis() as many:
        apikeys.sync_usage()
    assert (few.commands, few.round_trips, few.mongo_ops) == (many.commands, many.round_trips, many.mongo_ops)
    assert len(made) == 20


def test_sync_is_idempotent_with_many_keys():
    _make_keys(200, used=5)
    first = apikeys.sync_usage()
    docs = _usage_docs()
    second = apikeys.sync_usage()
    assert first.written == second.written == 5 and _usage_docs() == docs


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_first_use_of_the_day_indexes_the_key_once_and_later_checks_stay_one_command(raw_redis):
    warm = apikeys.create("warm")
    apikeys.check(warm.raw_key)  # record cached: the next checks of other keys are warm except for the record
    new = apikeys.create("alice", daily_limit=10)
    apikeys.check(new.raw_key)  # cold load and first use: indexed
    index = _records.touched_key(hotcache_clock.utcnow().date())
    tag = _records.tag_of(_records.digest_of(new.raw_key))
    day = hotcache_clock.utcnow().date()
    assert raw_redis.sismember(index, _records.touched_member(day, f"{new.key_id}:{tag}"))  # signed
    assert 0 < raw_redis.ttl(index) <= _records.counter_ttl()
    for _ in range(3):
        with count_redis() as c:
            apikeys.check(new.raw_key)
        assert (c.commands, c.round_trips, c.mongo_ops) == (1, 1, 0)


def test_first_warm_use_of_a_new_day_adds_one_round_trip(clock):
    new = apikeys.create("alice")
    apikeys.check(new.raw_key)
    clock.advance(86400)
    with count_redis() as first:
        apikeys.check(new.raw_key)  # the record is cached (TTL in real time); the day's counter is new
    with count_redis() as second:
        apikeys.check(new.raw_key)
    assert (first.commands, first.round_trips, first.mongo_ops) == (3, 2, 0)  # EVALSHA; SADD + EXPIRE
    assert (second.commands, second.round_trips, second.mongo_ops) == (1, 1, 0)


def test_a_failed_index_write_is_retried_by_the_next_check_and_the_use_counted_once(monkeypatch):
    new = apikeys.create("alice")
    real_call = redis_backend.call
    failed = []

    def flaky(feature, fn):
        if getattr(fn, "__name__", "") == "add" and not failed:
            failed.append(fn)
            raise RedisUnavailable("lost connection")
        return real_call(feature, fn)

    monkeypatch.setattr(redis_backend, "call", flaky)
    assert apikeys.check(new.raw_key).used_today == 1  # counted on Redis; never again on MongoDB
    assert failed and _recovery.touched
    assert apikeys.check(new.raw_key).used_today == 2  # replays first: the index entry is written
    assert not _recovery.touched
    assert apikeys.sync_usage().written == 1
    assert [(r, f) for _, _, r, f in _usage_docs()] == [(2, 0)]


def test_outage_counts_of_a_key_never_counted_on_redis_today_are_pushed_back(redis_proxy, clock):
    _warm_sync()
    _make_keys(50, used=0)
    new = apikeys.create("alice", daily_limit=4)
    redis_proxy.down()
    assert sum(apikeys.check(new.raw_key).allowed for _ in range(3)) == 3  # on MongoDB only
    redis_proxy.up()
    clock.advance(6)  # past the health gate's cool-down
    new_process()  # another process: it did not count them
    with count_redis() as c:
        result = apikeys.sync_usage()
    assert result.bases_pushed == 1 and result.written == 0
    # revoked query, today's MongoDB-counted uses, one $in query for their keys (no bulk: nothing on Redis)
    assert c.mongo_ops == 3
    assert [apikeys.check(new.raw_key).allowed for _ in range(2)] == [True, False]
    apikeys.sync_usage()
    assert apikeys.usage(new.key_id, days=1)[0][1] == 4


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_tombstones_of_keys_revoked_in_the_window_are_resent_without_reading_other_keys(raw_redis):
    _warm_sync()
    made = _make_keys(100, used=2)
    apikeys.revoke(made[50].key_id)  # never used
    meta = _records.meta_key(_records.tag_of(_records.digest_of(made[50].raw_key)))
    raw_redis.delete(meta)  # as if the revoking process could not reach Redis
    with count_redis() as c:
        apikeys.sync_usage()
    tag = _records.tag_of(_records.digest_of(made[50].raw_key))
    assert raw_redis.get(meta) == _records.tombstone(tag).encode()  # the signed tombstone
    assert (c.commands, c.mongo_ops) == (1 + 2 + 2, 3) and c.round_trips in pipelined(2)  # SET + 2 SSCAN; 2 GETs
    with pytest.raises(apikeys.InvalidKey):
        apikeys.check(made[50].raw_key)


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_a_past_days_index_is_closed_after_the_grace_and_its_history_kept(raw_redis, clock):
    new = apikeys.create("alice")
    for _ in range(3):
        apikeys.check(new.raw_key)
    day = hotcache_clock.utcnow().date()
    clock.advance(86400 + 2 * 3600 - clock.time() % 86400)  # 02:00 the next day: past the grace
    assert apikeys.sync_usage().written == 1
    assert not raw_redis.exists(_records.touched_key(day))
    with count_redis() as c:
        assert apikeys.sync_usage().written == 0  # nothing used today; yesterday is in MongoDB already
    assert (c.commands, c.round_trips) == (2, 1)
    assert apikeys.usage(new.key_id, days=2)[1] == (day, 3)


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_yesterdays_index_is_kept_within_the_grace(raw_redis, clock):
    new = apikeys.create("alice")
    apikeys.check(new.raw_key)
    day = hotcache_clock.utcnow().date()
    clock.advance(86400 + 60 - clock.time() % 86400)  # 00:01 the next day
    apikeys.sync_usage()
    assert raw_redis.exists(_records.touched_key(day))


def test_list_keys_limit_bounds_the_redis_reads():
    made = _make_keys(30, used=2)
    apikeys.list_keys()  # warm
    with count_redis() as c:
        listed = apikeys.list_keys(limit=10)
    assert len(listed) == 10 and (c.commands, c.mongo_ops) == (10, 2) and c.round_trips in pipelined(1)
    assert {k.key_id for k in apikeys.list_keys("owner0", limit=100)} == {m.key_id for m in made[::7]}
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            apikeys.list_keys(limit=bad)


def test_reports_page_reads_at_most_its_cap_of_keys(monkeypatch):
    monkeypatch.setattr(apikeys_page, "APIKEYS_READ", 10)
    _make_keys(15, used=1)
    sections = reports.feature_summary("apikeys", 7).sections
    assert "of the 10 newest keys" in sections[0].note and len(sections[0].rows) == 10
