"""Workbench sessions on the real Redis: versions, lifetimes, validation, and the MongoDB fallback."""

import pytest

from hotcache import workbench
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.testing import count_redis, new_process
from hotcache.workbench import _layout
from tests.support.concurrency import increment_concurrently


@pytest.fixture(autouse=True)
def _clean_workbench_keys(raw_redis, key_prefix):
    """Redis is shared by the whole run: each test starts without workbench keys."""
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*"):
        raw_redis.unlink(key)
    new_process()  # and without envelopes this process remembers from an earlier test


def warm():
    redis_backend.call("warm", lambda r: r.ping())
    # Load every script once so the counted calls are EVALSHA hits.
    workbench.save("warmup", {})
    workbench.load("warmup")


def workbench_keys(raw_redis, key_prefix):
    return sorted(k.decode() for k in raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*"))


def active_docs():
    return mongo.collection(workbench.ACTIVE, feature="test").find({})


def history_docs():
    return mongo.collection(workbench.HISTORY, feature="test").find({})


def test_save_and_load_take_one_round_trip_each():
    warm()
    workbench.flush_durable()
    with count_redis() as c:
        version = workbench.save("s1", {"doc": [1, 2]}, owner="alice")
    # Durable saves (the default): the copy waits for this process's background writer, no MongoDB operation here.
    assert version == 1 and c.round_trips == 1 and c.commands == 1 and c.mongo_ops == 0
    with count_redis() as c:
        assert workbench.flush_durable() == 1
    # The writer's bulk (a creation's row inserts where the id holds nothing: no read first).
    assert c.mongo_ops == 1 and c.round_trips == 0
    with count_redis() as c:
        session = workbench.load("s1")
    # A pipeline of HMGET (the session) and GET (the recovery fence): 2 billed commands.
    assert c.round_trips == 1 and c.commands == 2 and c.billed == 2 and c.mongo_ops == 0
    assert session.state == {"doc": [1, 2]} and session.version == 1 and session.owner == "alice"
    assert session.created_at == session.updated_at and session.created_at.tzinfo is not None


def test_versions_increase_and_owner_is_kept():
    workbench.save("s1", {"n": 1}, owner=42)
    assert workbench.save("s1", {"n": 2}) == 2
    session = workbench.load("s1")
    assert session.version == 2 and session.owner == "42" and session.state == {"n": 2}


def test_stale_expected_version_raises_conflict_and_keeps_the_newer_state():
    workbench.save("s1", {"n": 1})
    workbench.save("s1", {"n": 2}, expected_version=1)
    with pytest.raises(workbench.Conflict) as info:
        workbench.save("s1", {"n": "stale"}, expected_version=1)
    assert info.value.current == 2 and info.value.expected == 1
    assert workbench.load("s1").state == {"n": 2}


def test_expected_version_zero_creates_only():
    assert workbench.save("s1", {"n": 1}, expected_version=0) == 1
    with pytest.raises(workbench.Conflict):
        workbench.save("s1", {"n": 2}, expected_version=0)


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_load_and_save_renew_the_idle_lifetime_once_per_refresh_interval(clock, raw_redis, key_prefix):
    idle, every = hotcache_settings.WORKBENCH_IDLE_TIMEOUT, _layout._refresh_every()
    assert 0 < every < hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER
    workbench.save("s1", {})
    key = f"{key_prefix}:{{workbench:s}}:d:s1"
    index = f"{key_prefix}:{{workbench:s}}:idx"
    # The key outlives its last refresh by the idle timeout plus the interval: every use within the interval
    # is followed by at least the idle timeout.
    assert idle + every - 5 < raw_redis.ttl(key) <= idle + every
    first_seen = raw_redis.zscore(index, "s1")
    clock.advance(every - 1)
    workbench.load("s1")
    workbench.save("s1", {"n": 1})
    assert raw_redis.zscore(index, "s1") == first_seen  # within the interval: read and written, not refreshed
    raw_redis.expire(key, 10)  # time passes on the server too
    clock.advance(1)
    workbench.load("s1")
    assert raw_redis.ttl(key) > idle and raw_redis.zscore(index, "s1") == pytest.approx(first_seen + every)
    raw_redis.expire(key, 10)
    clock.advance(every)
    workbench.save("s1", {"n": 2})
    assert raw_redis.ttl(key) > idle and raw_redis.zscore(index, "s1") == pytest.approx(first_seen + 2 * every)
    assert workbench.load("s1").state == {"n": 2}


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_a_session_saved_before_the_refresh_field_existed_loads_saves_and_gets_it(raw_redis, key_prefix):
    """A session written by the release before (no field t) is read the same and refreshed on first use."""
    workbench.save("s1", {"n": 1})
    key = f"{key_prefix}:{{workbench:s}}:d:s1"
    raw_redis.hdel(key, "t")
    raw_redis.expire(key, 10)
    assert workbench.load("s1").state == {"n": 1}
    assert raw_redis.hget(key, "t") is not None and raw_redis.ttl(key) > hotcache_settings.WORKBENCH_IDLE_TIMEOUT
    raw_redis.hdel(key, "t")
    raw_redis.expire(key, 10)
    assert workbench.save("s1", {"n": 2}, expected_version=1) == 2
    assert raw_redis.hget(key, "t") is not None and raw_redis.ttl(key) > hotcache_settings.WORKBENCH_IDLE_TIMEOUT


def test_concurrent_read_modify_write_with_expected_version_loses_no_update():
    workbench.save("counter", {"n": 0})
    threads_n, per_thread = 6, 25
    increment_concurrently("counter", threads_n, per_thread)
    final = workbench.load("counter")
    assert final.state["n"] == threads_n * per_thread
    assert final.version == threads_n * per_thread + 1


def test_end_removes_the_session_from_the_hot_store_and_frees_the_id():
    workbench.save("s1", {"n": 1})
    assert workbench.end("s1") is True
    assert workbench.load("s1") is None
    assert workbench.end("s1") is False
    # The id can start a new session at once (a new incarnation, version 1).
    assert workbench.save("s1", {"n": "new"}) == 1


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ({"when": {1, 2}}, "not JSON-serialisable"),
        ({"x": float("nan")}, "not JSON-serialisable"),
        (["not", "a", "dict"], "must be a dict"),
        ({"blob": "x" * 2000}, "over the limit of 1000"),
    ],
)
def test_invalid_state_raises_value_error_and_writes_nothing(hotcache_config, raw_redis, key_prefix, state, reason):
    hotcache_config(WORKBENCH_MAX_STATE_BYTES=1000)
    with pytest.raises(ValueError, match=reason):
        workbench.save("s1", state)
    assert workbench_keys(raw_redis, key_prefix) == []
    assert active_docs() == []


def test_state_size_counts_utf8_bytes(hotcache_config):
    hotcache_config(WORKBENCH_MAX_STATE_BYTES=100)
    with pytest.raises(ValueError, match="over the limit"):
        workbench.save("s1", {"t": "é" * 60})  # 60 characters, 120 bytes


@pytest.mark.parametrize("bad", ["a:b", "x" * 65, "", "{workbench:s}", "s 1", "../etc", 7, None])
def test_invalid_session_ids_are_rejected_before_any_key_is_built(raw_redis, key_prefix, bad):
    with pytest.raises(ValueError, match="workbench session id"):
        workbench.save(bad, {})
    with pytest.raises(ValueError):
        workbench.load(bad)
    with pytest.raises(ValueError):
        workbench.end(bad)
    assert workbench_keys(raw_redis, key_prefix) == []


def test_invalid_owner_is_rejected(raw_redis, key_prefix):
    with pytest.raises(ValueError, match="workbench owner"):
        workbench.save("s1", {}, owner="bob\n")
    assert workbench_keys(raw_redis, key_prefix) == []


def test_bad_expected_version_is_rejected():
    with pytest.raises(ValueError, match="expected_version"):
        workbench.save("s1", {}, expected_version=-1)


# --- Redis down: the MongoDB fallback (workbench_active) ----------------------------------------------


@pytest.mark.mongo_contract
def test_with_redis_down_save_load_and_conflicts_work_on_mongodb(redis_down):
    with count_redis() as c:
        assert workbench.save("s1", {"n": 1}, owner="alice") == 1
        assert workbench.save("s1", {"n": 2}, expected_version=1) == 2
        with pytest.raises(workbench.Conflict):
            workbench.save("s1", {"n": "stale"}, expected_version=1)
        session = workbench.load("s1")
    assert session.state == {"n": 2} and session.version == 2 and session.owner == "alice"
    assert c.events["workbench:fallback"] >= 4
    assert [d["_id"] for d in active_docs()] == ["s1"]


@pytest.mark.mongo_contract
def test_with_redis_down_expected_version_zero_creates_only(redis_down):
    workbench.save("s1", {}, expected_version=0)
    with pytest.raises(workbench.Conflict):
        workbench.save("s1", {}, expected_version=0)


@pytest.mark.mongo_contract
def test_with_redis_down_end_writes_history_directly(redis_down):
    workbench.save("s1", {"n": 1}, owner="alice")
    assert workbench.end("s1") is True
    assert workbench.load("s1") is None
    [entry] = workbench.history(owner="alice")
    assert entry.state == {"n": 1} and entry.reason == "ended"
    assert active_docs() == []


@pytest.mark.mongo_contract
def test_session_saved_during_an_outage_continues_in_redis_when_it_returns(
    redis_proxy, clock, settings, hotcache_config
):
    hotcache_config(WORKBENCH_DURABLE_SAVES=False)  # the durable-save variant is in tests/workbench/test_durable.py
    workbench.save("s1", {"n": 1})
    redis_proxy.down()
    session = workbench.load("s1")
    assert session is None  # durable saves off: only Redis has it, which cannot be reached: not visible
    assert workbench.save("s2", {"n": 1}, owner="bob") == 1  # goes to MongoDB
    assert workbench.save("s2", {"n": 2}, expected_version=1) == 2
    redis_proxy.up()
    clock.advance(settings.HOTCACHE.get("HEALTH_COOLDOWN", 5.0) + 1)
    # Redis is back: the session saved before the outage is intact, and the outage session moves over.
    assert workbench.load("s1").state == {"n": 1}
    moved = workbench.load("s2")
    assert moved.state == {"n": 2} and moved.version == 2 and moved.owner == "bob"
    assert active_docs() == []
    assert workbench.save("s2", {"n": 3}, expected_version=2) == 3


@pytest.mark.mongo_contract
def test_save_with_expected_version_after_an_outage_continues_from_the_mongodb_copy(
    redis_proxy, clock, hotcache_config
):
    hotcache_config(WORKBENCH_DURABLE_SAVES=False)  # without durable saves, MongoDB keeps no copy once migrated
    redis_proxy.down()
    workbench.save("s1", {"n": 1})
    redis_proxy.up()
    clock.advance(10)
    assert workbench.save("s1", {"n": 2}, expected_version=1) == 2
    assert workbench.load("s1").state == {"n": 2}
    assert active_docs() == []


@pytest.mark.mongo_contract
def test_redis_taken_away_between_a_save_and_a_load_returns_the_saved_state(redis_proxy, clock):
    """A save made while Redis is unreachable is returned by the next load, whether Redis is back or not."""
    redis_proxy.down()
    workbench.save("s1", {"draft": "v1"})
    assert workbench.load("s1").state == {"draft": "v1"}  # still down: served by MongoDB
    redis_proxy.up()
    clock.advance(10)
    assert workbench.load("s1").state == {"draft": "v1"}  # back: migrated into Redis


@pytest.mark.mongo_contract
def test_during_an_outage_a_versioned_save_of_a_redis_only_session_conflicts_instead_of_forking(
    redis_proxy, hotcache_config
):
    hotcache_config(WORKBENCH_DURABLE_SAVES=False)  # with durable saves the session is on MongoDB: no conflict
    workbench.save("s1", {"draft": "v1"})
    redis_proxy.down()
    with pytest.raises(workbench.Conflict):
        workbench.save("s1", {"draft": "v2"}, expected_version=1)
    redis_proxy.up()


@pytest.mark.mongo_contract
def test_end_after_an_outage_ends_the_mongodb_copy(redis_proxy, clock):
    redis_proxy.down()
    workbench.save("s1", {"n": 1})
    redis_proxy.up()
    clock.advance(10)
    assert workbench.end("s1") is True
    assert workbench.load("s1") is None
    assert [e.session_id for e in workbench.history()] == ["s1"]


def test_feature_events_are_metered():
    with count_redis() as c:
        workbench.save("s1", {"n": 1})
        workbench.load("s1")
        with pytest.raises(workbench.Conflict):
            workbench.save("s1", {}, expected_version=5)
        workbench.end("s1")
        workbench.persist()
    for name in ("saved", "loaded", "conflict", "ended", "persisted"):
        assert c.events[f"workbench:{name}"] == 1, name
