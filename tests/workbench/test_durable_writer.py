"""The background writer of durable copies (WORKBENCH_DURABLE_INTERVAL > 0, the default): saves cost no MongoDB
operation on the request path; each process writes the newest version of each session in one bulk per interval,
at exit, and before it uses workbench_active itself (a Redis outage). Real Redis; the stand-in and a real server.
The daemon's timing is not tested here (no sleeps): the clock is frozen and the writer is driven by its flush.
"""

import json
import os
import subprocess
import sys

import pytest

from hotcache import workbench
from hotcache.backends import mongo
from hotcache.checks import check_workbench
from hotcache.testing import count_redis, new_process
from hotcache.workbench import _layout
from hotcache.workbench._durable import writer
from tests.support.concurrency import run_threads

pytestmark = pytest.mark.mongo_contract


@pytest.fixture(autouse=True)
def _clean(raw_redis, key_prefix, clock):
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*"):
        raw_redis.unlink(key)
    new_process()
    yield
    writer.clear()


def active(session_id):
    return mongo.collection(workbench.ACTIVE, feature="test").find_one({"_id": session_id})


def test_saves_of_one_session_in_an_interval_are_one_mongodb_write_of_the_last_version():
    workbench.save("s1", {"n": 0}, owner="alice")
    workbench.flush_durable()  # (the creation; workbench_active's indexes are created on first use)
    with count_redis() as c:
        for n in range(1, 6):
            workbench.save("s1", {"n": n})
    assert c.mongo_ops == 0 and active("s1")["version"] == 1  # nothing on the request path
    with count_redis() as c:
        assert workbench.flush_durable() == 1
    assert c.mongo_ops == 1
    doc = active("s1")
    assert (doc["version"], doc["state"], doc["owner"], doc["origin"]) == (6, '{"n":5}', "alice", "redis")
    assert workbench.flush_durable() == 0  # nothing left to write


def test_creations_of_an_interval_cost_one_bulk():
    workbench.save("warm", {})
    workbench.flush_durable()
    with count_redis() as c:
        for sid in ("a", "b", "c"):
            workbench.save(sid, {"v": 1})
            workbench.save(sid, {"v": 2})
    assert c.mongo_ops == 0
    with count_redis() as c:
        assert workbench.flush_durable() == 3
    assert c.mongo_ops == 1  # a creation's row inserts where the id holds nothing: no read first
    assert [active(sid)["version"] for sid in ("a", "b", "c")] == [2, 2, 2]


def test_a_creation_over_a_lost_incarnations_copy_keeps_that_one_in_history(raw_redis, key_prefix):
    workbench.save("lost", {"old": True}, owner="alice")
    workbench.save("fresh", {})
    workbench.flush_durable()
    raw_redis.unlink(_layout._data_key("lost"))  # lost from Redis (evicted, a restart)
    new_process()
    workbench.save("lost", {"new": True})  # a blind save: a new incarnation under the id
    workbench.save("fresh", {"n": 1})
    assert workbench.history() == []  # (history's indexes are created on first use)
    with count_redis() as c:
        assert workbench.flush_durable() == 2
    # The bulk (the creation's row meets the lost copy: E11000), one read of it, its history record, and the
    # creation written with the usual guard.
    assert c.mongo_ops == 4
    assert (active("lost")["state"], active("lost")["version"]) == ('{"new":true}', 1)
    assert active("fresh")["version"] == 2
    [entry] = workbench.history()
    assert (entry.session_id, entry.state, entry.reason, entry.owner) == ("lost", {"old": True}, "idle", "alice")


def test_later_saves_of_many_sessions_are_one_bulk_write():
    for sid in ("a", "b", "c"):
        workbench.save(sid, {"v": 0})
    workbench.flush_durable()
    for sid in ("a", "b", "c"):
        for v in (1, 2):
            workbench.save(sid, {"v": v})
    with count_redis() as c:
        assert workbench.flush_durable() == 3
    assert c.mongo_ops == 1
    assert [active(sid)["version"] for sid in ("a", "b", "c")] == [3, 3, 3]


def test_a_late_write_of_an_older_version_changes_nothing():
    workbench.save("s1", {"n": 1})
    workbench.save("s1", {"n": 2})
    workbench.flush_durable()
    older = workbench.load("s1")  # the copy another process still holds is older: the guard refuses it
    from hotcache.workbench import _envelope

    stale = _envelope._recall("s1")
    workbench.save("s1", {"n": 3})
    workbench.flush_durable()
    writer.add("s1", stale, '{"n":2}')
    workbench.flush_durable()
    assert older.version == 2 and (active("s1")["version"], active("s1")["state"]) == (3, '{"n":3}')


def test_an_ended_session_is_not_brought_back_by_its_pending_copy():
    workbench.save("s1", {"n": 1})
    workbench.flush_durable()
    workbench.save("s1", {"n": 2})
    with count_redis() as c:
        assert workbench.end("s1")
    # The end costs MongoDB nothing on the request path; Redis: the script (billed 11 with its ended record).
    assert c.mongo_ops == 0 and c.round_trips == 1 and c.billed == 11, c
    assert len(writer) == 1 and active("s1")["version"] == 1  # the pending copy is replaced by the ended mark
    with count_redis() as c:
        assert workbench.load("s1") is None  # a miss before the mark landed: Redis's ended record says no
    # The miss's one read of workbench_active (it finds the copy of v1, ended in Redis at v2: marked ended);
    # the pending mark is not flushed first.
    assert c.mongo_ops == 2 and len(writer) == 1 and active("s1")["ended"] is True
    with count_redis() as c:
        assert workbench.flush_durable() == 1
    assert c.mongo_ops == 1
    mark = active("s1")
    assert (mark["ended"], mark["version"], mark["state"]) == (True, 2, "{}")
    assert workbench.load("s1") is None
    new_process()
    assert workbench.load("s1") is None


def test_ends_and_saves_of_an_interval_are_one_bulk():
    for sid in ("a", "b", "c", "d"):
        workbench.save(sid, {"v": 0})
    workbench.flush_durable()
    with count_redis() as c:
        for sid in ("a", "b"):
            workbench.save(sid, {"v": 1})
            workbench.end(sid)
        workbench.end("c")
        workbench.save("d", {"v": 1})
    assert c.mongo_ops == 0
    with count_redis() as c:
        assert workbench.flush_durable() == 4
    assert c.mongo_ops == 1
    assert [bool(active(sid).get("ended")) for sid in ("a", "b", "c", "d")] == [True, True, True, False]
    assert [active(sid)["version"] for sid in ("a", "b", "c", "d")] == [2, 2, 1, 2]


def test_a_session_saved_just_before_redis_goes_down_is_loadable_in_the_same_process(redis_proxy):
    workbench.save("s1", {"draft": "v1"}, owner="alice")
    workbench.save("s1", {"draft": "v2"}, expected_version=1)
    assert len(writer) == 1 and active("s1") is None
    redis_proxy.down()
    session = workbench.load("s1")  # the outage path writes what this process owes first
    assert (session.state, session.version, session.owner) == ({"draft": "v2"}, 2, "alice")
    assert workbench.save("s1", {"draft": "v3"}, expected_version=2) == 3


def test_several_threads_saving_leave_each_session_at_its_last_version():
    def work(i):
        for n in range(10):
            workbench.save(f"own-{i}", {"n": n})
            while True:
                current = workbench.load("shared")
                base = current.version if current else 0
                try:
                    workbench.save("shared", {"by": i, "n": n}, expected_version=base)
                    break
                except workbench.Conflict:
                    continue
            if n == 4:
                workbench.flush_durable()  # a flush under way while the others keep saving

    run_threads(8, work)
    workbench.flush_durable()
    assert [active(f"own-{i}")["version"] for i in range(8)] == [10] * 8
    assert active("shared")["version"] == workbench.load("shared").version == 80


def test_the_interval_setting_is_checked(hotcache_config):
    for bad in (-1, "1", None, 61, True):
        hotcache_config(WORKBENCH_DURABLE_INTERVAL=bad)
        ids = [m.id for m in check_workbench()]
        assert "hotcache.E057" in ids, bad
        assert any("WORKBENCH_DURABLE_INTERVAL" in m.msg for m in check_workbench())
    for good in (0, 0.25, 1, 60):
        hotcache_config(WORKBENCH_DURABLE_INTERVAL=good)
        assert "hotcache.E057" not in [m.id for m in check_workbench()]


_CHILD = """
import json, sys
import django
from django.conf import settings
django.setup()
settings.CACHES = json.loads(sys.argv[1])
settings.HOTCACHE = json.loads(sys.argv[2])
from hotcache.conf import hotcache_settings
from hotcache import workbench
from hotcache.workbench._durable import writer
hotcache_settings.reload()
workbench.save("child", {"c": 1}, owner="kid")
workbench.save("child", {"c": 2})
assert len(writer) == 1
import atexit
from hotcache.backends import meter_store
atexit.unregister(meter_store._flush_at_exit)  # its pool figures would outlive this test in the meter hash
# a normal exit: the interpreter runs the atexit handlers
"""


@pytest.mark.django_db(databases=[])
def test_a_process_writes_its_pending_copies_at_exit(real_mongo, hotcache_config, settings, raw_redis, key_prefix):
    """Another Python process saves twice and exits normally: its copy is in MongoDB (the newest version)
    although its interval (60 s) never ended."""
    hotcache_config(WORKBENCH_DURABLE_INTERVAL=60)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    args = [json.dumps(settings.CACHES, default=str), json.dumps(settings.HOTCACHE, default=str)]
    done = subprocess.run([sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert done.returncode == 0, done.stderr[-2000:]
        doc = real_mongo.db()[workbench.ACTIVE].find_one({"_id": "child"})
        assert (doc["version"], doc["state"], doc["owner"]) == (2, '{"c":2}', "kid")
    finally:
        for key in raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*"):
            raw_redis.unlink(key)
