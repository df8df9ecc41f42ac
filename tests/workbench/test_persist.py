"""The workbench persister: ended and abandoned sessions reach MongoDB history exactly once, through
crashes, MongoDB outages, concurrent workers and a real Celery worker."""

import threading
from collections import Counter
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from hotcache import workbench
from hotcache.backends import mongo
from hotcache.conf import hotcache_settings
from hotcache.exceptions import MongoUnavailable, MongoWriteError
from hotcache.testing import count_redis, mongo_down, new_process
from hotcache.workbench import _persist
from tests.support.redis_cluster import warm_every_node

# MongoDB-facing contracts: each test runs on the stand-in and on a real server ([standin] / [real]).
pytestmark = pytest.mark.mongo_contract


@pytest.fixture(autouse=True)
def _clean_workbench_keys(raw_redis, key_prefix):
    """Redis is shared by the whole run: each test starts without workbench keys."""
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*"):
        raw_redis.unlink(key)
    new_process()  # and without envelopes this process remembers from an earlier test


def history_ids():
    return Counter(d["session_id"] for d in mongo.collection(workbench.HISTORY, feature="test").find({}))


def workbench_keys(raw_redis, key_prefix):
    """The workbench keys, but the ended records (kept WORKBENCH_ENDED_TTL: see ended_records)."""
    return [k for k in all_workbench_keys(raw_redis, key_prefix) if ":g:" not in k]


def all_workbench_keys(raw_redis, key_prefix):
    return sorted(k.decode() for k in raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*"))


def ended_records(raw_redis, key_prefix):
    """The sessions whose ended record (wb_end.lua) Redis keeps, each with a TTL of at most WORKBENCH_ENDED_TTL:
    what keeps a durable copy written late from bringing an ended session back (docs/workbench.md)."""
    found = [k for k in all_workbench_keys(raw_redis, key_prefix) if ":g:" in k]
    assert all(0 < raw_redis.ttl(k) <= hotcache_settings.WORKBENCH_ENDED_TTL for k in found)
    return sorted(k.rsplit(":g:", 1)[1] for k in found)


def idle_after():
    return hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER


def make_sessions(ended=3, abandoned=3, active=2):
    """Ended, abandoned (aged past the idle threshold by the caller) and active sessions."""
    for i in range(ended):
        workbench.save(f"ended-{i}", {"i": i}, owner="alice")
        workbench.save(f"ended-{i}", {"i": i, "final": True})
        workbench.end(f"ended-{i}")
    for i in range(abandoned):
        workbench.save(f"abandoned-{i}", {"i": i}, owner="bob")
    return [f"ended-{i}" for i in range(ended)], [f"abandoned-{i}" for i in range(abandoned)], active


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_ended_and_idle_sessions_reach_history_exactly_once(clock, raw_redis, key_prefix):
    ended, abandoned, _ = make_sessions()
    clock.advance(idle_after() + 1)
    workbench.save("active", {"still": "editing"})
    first = workbench.persist()
    assert (first.ended, first.idle, first.already, first.errors) == (3, 3, 0, [])
    second = workbench.persist()
    assert second.persisted == 0 and second.batches == 0
    assert history_ids() == Counter({s: 1 for s in ended + abandoned})
    entries = {e.session_id: e for e in workbench.history(limit=100)}
    assert entries["ended-0"].state == {"i": 0, "final": True} and entries["ended-0"].version == 2
    assert entries["ended-0"].reason == "ended" and entries["abandoned-1"].reason == "idle"
    assert workbench.load("active").state == {"still": "editing"}
    assert workbench.load("abandoned-0") is None
    # Nothing else left behind in Redis: only the active session and its index, and the ended sessions'
    # ended records (expiring).
    assert workbench_keys(raw_redis, key_prefix) == [
        f"{key_prefix}:{{workbench:s}}:d:active",
        f"{key_prefix}:{{workbench:s}}:idx",
    ]
    assert ended_records(raw_redis, key_prefix) == sorted(ended)


def test_history_is_newest_first_and_filters_by_owner(clock):
    for name, owner in (("a", "alice"), ("b", "bob"), ("c", "alice")):
        workbench.save(name, {"name": name}, owner=owner)
        workbench.end(name)
        clock.advance(1)
    workbench.persist()
    assert [e.session_id for e in workbench.history()] == ["c", "b", "a"]
    assert [e.session_id for e in workbench.history(owner="alice", limit=1)] == ["c"]


def test_a_session_used_again_after_the_idle_claim_stays_hot_and_history_keeps_one_record(clock, monkeypatch):
    workbench.save("s1", {"n": 1})
    clock.advance(idle_after() + 1)
    real_write = _persist._write_history

    def write_then_user_returns(records):
        result = real_write(records)
        workbench.save("s1", {"n": 2}, expected_version=1)  # between the history write and the ack
        return result

    monkeypatch.setattr(_persist, "_write_history", write_then_user_returns)
    result = workbench.persist()
    monkeypatch.setattr(_persist, "_write_history", real_write)
    assert result.kept == 1
    assert workbench.load("s1").state == {"n": 2}  # not lost
    clock.advance(idle_after() + 1)
    workbench.persist()
    assert history_ids() == Counter({"s1": 1})
    [entry] = workbench.history()
    assert entry.version == 2 and entry.state == {"n": 2}


def test_a_session_only_loaded_after_the_idle_claim_stays_hot(clock, monkeypatch):
    """A load renews the lifetime lazily (once per refresh interval), but a session the persister claimed is
    always due: the load puts it back into the index atomically with its read, and the ack keeps it."""
    workbench.save("s1", {"n": 1})
    clock.advance(idle_after() + 1)
    real_write = _persist._write_history

    def write_then_user_reads(records):
        result = real_write(records)
        assert workbench.load("s1").state == {"n": 1}  # between the history write and the ack
        return result

    monkeypatch.setattr(_persist, "_write_history", write_then_user_reads)
    result = workbench.persist()
    monkeypatch.setattr(_persist, "_write_history", real_write)
    assert result.kept == 1
    assert workbench.load("s1").state == {"n": 1}  # still hot
    assert history_ids() == Counter({"s1": 1})


def test_a_session_saved_before_the_refresh_field_existed_is_persisted_once_idle(clock, raw_redis):
    """The layout before issue 17 (no field t; TTL = the idle timeout): such a session still reaches history."""
    from hotcache.workbench import _layout

    workbench.save("old", {"n": 1}, owner="alice")
    raw_redis.hdel(_layout._data_key("old"), "t")
    raw_redis.expire(_layout._data_key("old"), hotcache_settings.WORKBENCH_IDLE_TIMEOUT)
    clock.advance(idle_after() + 1)
    result = workbench.persist()
    assert (result.idle, result.errors) == (1, [])
    [entry] = workbench.history()
    assert entry.session_id == "old" and entry.state == {"n": 1} and entry.owner == "alice"
    assert not raw_redis.exists(_layout._data_key("old"))


def test_a_reused_id_after_end_gets_its_own_history_record():
    workbench.save("s1", {"first": True})
    workbench.end("s1")
    workbench.save("s1", {"second": True})
    workbench.end("s1")
    workbench.persist()
    assert history_ids() == Counter({"s1": 2})
    assert {tuple(e.state) for e in workbench.history()} == {("first",), ("second",)}


def _fail_after_claim(monkeypatch):
    def boom(claimed):
        raise RuntimeError("crash after claim")

    monkeypatch.setattr(_persist, "_read", boom)


def _fail_after_partial_write(monkeypatch):
    real = _persist._write_history

    def half(records):
        real(records[: len(records) // 2])
        raise MongoUnavailable("connection lost mid-bulk")

    monkeypatch.setattr(_persist, "_write_history", half)


def _fail_after_write_before_ack(monkeypatch):
    def boom(run_id, claimed):
        raise RuntimeError("crash before ack")

    monkeypatch.setattr(_persist, "_ack", boom)


@pytest.mark.parametrize(
    "inject",
    [_fail_after_claim, _fail_after_partial_write, _fail_after_write_before_ack],
    ids=["after-claim", "after-partial-bulk-write", "after-write-before-ack"],
)
@pytest.mark.parametrize("crash", [False, True], ids=["failure-reported", "process-killed"])
def test_persister_interrupted_at_each_step_then_rerun_leaves_exactly_one_record(
    clock, monkeypatch, raw_redis, key_prefix, inject, crash
):
    ended, abandoned, _ = make_sessions(ended=4, abandoned=4)
    clock.advance(idle_after() + 1)
    with monkeypatch.context() as m:
        inject(m)
        if crash:
            # A killed process releases nothing: its claims wait for WORKBENCH_CLAIM_TIMEOUT.
            m.setattr(_persist, "_release", lambda run_id, members: None)
        try:
            result = workbench.persist()
        except RuntimeError:
            pass
        else:
            assert result.errors  # a MongoDB failure is reported, not raised
    if crash:
        assert workbench.persist().persisted == 0  # claims are not stale yet: nobody steals them
        clock.advance(hotcache_settings.WORKBENCH_CLAIM_TIMEOUT + 1)
    rerun = workbench.persist()
    assert rerun.errors == [] and rerun.recovered == 8
    assert history_ids() == Counter({s: 1 for s in ended + abandoned})
    assert workbench.persist().batches == 0
    assert workbench_keys(raw_redis, key_prefix) == []
    assert ended_records(raw_redis, key_prefix) == sorted(ended)


def test_mongodb_outage_leaves_sessions_queued_for_the_next_run(clock):
    ended, _, _ = make_sessions(ended=3, abandoned=0)
    with mongo_down():
        result = workbench.persist()
    assert result.errors and result.persisted == 0
    assert workbench.persist().ended == 3
    assert history_ids() == Counter({s: 1 for s in ended})


def test_a_write_mongodb_refuses_is_reported_and_leaves_the_sessions_queued(clock, monkeypatch):
    """A MongoWriteError (not a duplicate key) is a store failure: reported, nothing lost, the rerun writes."""
    ended, _, _ = make_sessions(ended=3, abandoned=0)

    def refused(records):
        raise MongoWriteError("document failed validation", code=121)

    with monkeypatch.context() as m:
        m.setattr(_persist, "_write_history", refused)
        result = workbench.persist()
        assert result.persisted == 0 and any("stay queued" in e for e in result.errors)
        with pytest.raises(CommandError, match="stays queued"):
            call_command("persist_workbench", stdout=StringIO())
    assert workbench.persist().ended == 3
    assert history_ids() == Counter({s: 1 for s in ended})


def test_two_persisters_at_once_write_each_session_once(clock, hotcache_config):
    hotcache_config(WORKBENCH_PERSIST_BATCH=10)  # many small batches, so the two runs interleave
    ended, abandoned, _ = make_sessions(ended=60, abandoned=60)
    clock.advance(idle_after() + 1)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def run():
        try:
            barrier.wait()
            results.append(workbench.persist(limit=None))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r.ended + r.idle for r in results) == 120
    assert history_ids() == Counter({s: 1 for s in ended + abandoned})


def test_a_stale_claim_taken_over_while_its_first_owner_still_runs_is_written_once(clock, monkeypatch):
    """Worker A stalls after claiming; its claim goes stale; B takes over and acks; A finishes: one record."""
    ended, _, _ = make_sessions(ended=3, abandoned=0)
    real_read = _persist._read
    takeover = {}

    def stalled_read(claimed):
        real_read(claimed)
        if not takeover:
            takeover["started"] = True
            clock.advance(hotcache_settings.WORKBENCH_CLAIM_TIMEOUT + 1)
            takeover["b"] = workbench.persist()  # worker B, while A is stalled
        return None

    monkeypatch.setattr(_persist, "_read", stalled_read)
    a = workbench.persist()
    b = takeover["b"]
    assert b.recovered == 3 and b.ended == 3
    assert a.ended == 0 and a.already == 3  # A's write was a no-op (E11000), its ack not its to make
    assert history_ids() == Counter({s: 1 for s in ended})


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_persisting_uses_one_bulk_write_per_batch(hotcache_config):
    hotcache_config(WORKBENCH_PERSIST_BATCH=50)
    for i in range(120):
        workbench.save(f"s{i}", {"i": i})
        workbench.end(f"s{i}")
    warm_every_node()  # on a cluster: the persist scripts loaded, and the meter's keys' masters connected
    with count_redis() as c:
        result = workbench.persist()
    assert result.ended == 120 and result.batches == 3
    # Per batch: claim, read pipeline, ack (+1 stale-claim count, +1 recovery-fence read per run, +1 empty
    # final claim).
    assert c.round_trips <= 3 * 3 + 3
    # Per batch: the history bulk and one delete of the batch's durable copies (ended marks); per run: the
    # bulk of the 120 ended marks this process still owed (written first), index creation, the recovery read,
    # the final empty sweep of workbench_active and the delete of old ended marks. Not one per session.
    assert c.mongo_ops <= 3 * 2 + 7
    assert len(history_ids()) == 120


def test_idle_sessions_saved_on_the_fallback_are_swept_into_history(redis_proxy, clock):
    redis_proxy.down()
    workbench.save("outage", {"n": 1}, owner="carol")
    workbench.save("outage-active", {"n": 1})
    clock.advance(idle_after() + 1)
    workbench.load("outage-active")  # still in use
    result = workbench.persist()  # Redis still down: only the MongoDB sweep runs
    assert result.from_fallback == 1 and result.errors
    redis_proxy.up()
    clock.advance(10)
    assert history_ids() == Counter({"outage": 1})
    assert workbench.persist().persisted == 0
    assert workbench.load("outage-active").state == {"n": 1}


def test_dry_run_counts_without_moving(clock):
    make_sessions(ended=2, abandoned=1)
    clock.advance(idle_after() + 1)
    result = workbench.persist(dry_run=True)
    assert result.pending["ended"] == 2 and result.pending["idle"] == 1
    assert history_ids() == Counter()


def test_persist_workbench_command_prints_what_it_moved(clock):
    make_sessions(ended=2, abandoned=1)
    clock.advance(idle_after() + 1)
    out = StringIO()
    call_command("persist_workbench", "--dry-run", stdout=out)
    assert "ended 2" in out.getvalue() and "idle 1" in out.getvalue()
    out = StringIO()
    call_command("persist_workbench", stdout=out)
    assert "Moved 3 session(s) to history: 2 ended, 1 abandoned" in out.getvalue()


def test_persist_workbench_command_fails_loudly_when_mongodb_is_down():
    make_sessions(ended=1, abandoned=0)
    with mongo_down(), pytest.raises(CommandError, match="stays queued"):
        call_command("persist_workbench", stdout=StringIO())


def test_a_real_celery_worker_runs_the_persist_task(celery_worker, clock):
    from hotcache.tasks import persist_workbench_sessions

    ended, abandoned, _ = make_sessions(ended=2, abandoned=2)
    clock.advance(idle_after() + 1)
    outcome = persist_workbench_sessions.delay().get(timeout=30)
    assert outcome["persisted"] == 4 and outcome["errors"] == []
    assert history_ids() == Counter({s: 1 for s in ended + abandoned})
