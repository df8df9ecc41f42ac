"""Who owns a workbench session: set by the save that creates it, kept by saves without an owner, never
silently re-assigned: another owner raises OwnerConflict unless expected_owner names the current one. One contract
run on Redis and on the MongoDB fallback, including concurrent writers."""

import threading

import pytest

from hotcache import workbench
from hotcache.backends import mongo
from hotcache.testing import new_process
from hotcache.workbench import _envelope

pytestmark = pytest.mark.urls("config.demo.urls")


@pytest.fixture(autouse=True)
def _clean_workbench_keys(raw_redis, key_prefix):
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*"):
        raw_redis.unlink(key)
    new_process()  # and without envelopes this process remembers from an earlier test


@pytest.fixture(params=["redis", "mongodb fallback", "mongodb fallback, real server"])
def store(request):
    """Redis; the MongoDB fallback on the in-process stand-in; the same on a real MongoDB server."""
    if request.param == "mongodb fallback, real server":
        request.getfixturevalue("real_mongo")
    if request.param != "redis":
        request.getfixturevalue("redis_down")
    return request.param


def active(session_id):
    return mongo.collection(workbench.ACTIVE, feature="test").find_one({"_id": session_id})


def test_the_creating_save_sets_the_owner_and_saves_without_one_keep_it(store):
    assert workbench.save("s1", {"n": 1}, owner="alice") == 1
    assert workbench.save("s1", {"n": 2}) == 2
    assert workbench.save("s1", {"n": 3}, expected_version=2) == 3
    assert workbench.save("s1", {"n": 4}, owner="alice") == 4  # the same owner is no change
    session = workbench.load("s1")
    assert (session.owner, session.version, session.state) == ("alice", 4, {"n": 4})


@pytest.mark.parametrize("expected_version", [None, 1])
def test_a_save_naming_another_owner_raises_owner_conflict_and_writes_nothing(store, expected_version):
    workbench.save("s1", {"n": 1}, owner="alice")
    with pytest.raises(workbench.OwnerConflict) as info:
        workbench.save("s1", {"n": "mallory's"}, owner="mallory", expected_version=expected_version)
    assert isinstance(info.value, ValueError)
    assert info.value.current_owner == "alice" and info.value.owner == "mallory"
    assert "alice" not in str(info.value) and "expected_owner" in str(info.value)
    session = workbench.load("s1")
    assert (session.owner, session.version, session.state) == ("alice", 1, {"n": 1})


def test_a_version_conflict_is_reported_before_an_owner_conflict(store):
    workbench.save("s1", {"n": 1}, owner="alice")
    with pytest.raises(workbench.Conflict):
        workbench.save("s1", {}, owner="mallory", expected_version=7)


def test_expected_owner_equal_to_the_current_owner_transfers_the_session(store):
    workbench.save("s1", {"n": 1}, owner="alice")
    assert workbench.save("s1", {"n": 2}, owner="bob", expected_owner="alice") == 2
    assert workbench.load("s1").owner == "bob"
    assert workbench.save("s1", {"n": 3}) == 3  # bob's now; kept
    with pytest.raises(workbench.OwnerConflict):
        workbench.save("s1", {"n": "back"}, owner="alice")
    assert workbench.end("s1")
    workbench.persist()
    [entry] = workbench.history()
    assert (entry.owner, entry.state) == ("bob", {"n": 3})


def test_expected_owner_that_is_not_the_current_owner_refuses(store):
    workbench.save("s1", {"n": 1}, owner="alice")
    with pytest.raises(workbench.OwnerConflict, match="not owned by expected_owner"):
        workbench.save("s1", {"n": 2}, owner="bob", expected_owner="carol")
    with pytest.raises(workbench.OwnerConflict):
        workbench.save("s1", {"n": 2}, expected_owner="carol")  # alone: a guard
    assert workbench.save("s1", {"n": 2}, expected_owner="alice") == 2  # guard passes, owner kept
    assert workbench.load("s1").owner == "alice"


def test_an_unowned_session_gets_an_owner_only_with_expected_owner_none(store):
    workbench.save("s1", {"n": 1})
    with pytest.raises(workbench.OwnerConflict):
        workbench.save("s1", {"n": 2}, owner="bob")
    assert workbench.save("s1", {"n": 2}, owner="bob", expected_owner=None) == 2
    assert workbench.load("s1").owner == "bob"
    with pytest.raises(workbench.OwnerConflict):
        workbench.save("s1", {"n": 3}, owner="carol", expected_owner=None)  # it has an owner now


def test_expected_owner_is_not_consulted_when_the_save_creates_the_session(store):
    assert workbench.save("s1", {"n": 1}, owner="bob", expected_owner="alice") == 1
    assert workbench.load("s1").owner == "bob"


def test_a_new_incarnation_after_end_belongs_to_whoever_creates_it(store):
    workbench.save("s1", {"n": 1}, owner="alice")
    workbench.end("s1")
    assert workbench.save("s1", {"n": 1}, owner="bob") == 1
    assert workbench.load("s1").owner == "bob"


def test_int_owners_compare_as_their_text(store):
    workbench.save("s1", {}, owner=42)
    assert workbench.save("s1", {}, owner="42") == 2
    assert workbench.save("s1", {}, owner=43, expected_owner=42) == 3
    assert workbench.load("s1").owner == "43"


@pytest.mark.parametrize("bad", ["a\x00", "\ud800", "", "x" * 129, 1.5, ["alice"], b"alice"])
def test_a_bad_expected_owner_is_invalid_input(store, bad):
    workbench.save("s1", {}, owner="alice")
    with pytest.raises(workbench.InvalidInput) as info:
        workbench.save("s1", {}, owner="bob", expected_owner=bad)
    assert info.value.field == "expected_owner"
    assert workbench.load("s1").owner == "alice"


@pytest.mark.mongo_contract
def test_the_owner_rule_holds_on_the_fallback_for_a_session_saved_on_redis(redis_proxy):
    workbench.save("s1", {"n": 1}, owner="alice")  # Redis, plus its durable copy
    redis_proxy.down()
    with pytest.raises(workbench.OwnerConflict):
        workbench.save("s1", {"n": "mallory's"}, owner="mallory")
    with pytest.raises(workbench.OwnerConflict):
        workbench.save("s1", {"n": "mallory's"}, owner="mallory", expected_version=1)
    assert active("s1")["owner"] == "alice" and active("s1")["version"] == 1
    assert workbench.save("s1", {"n": 2}, owner="bob", expected_owner="alice") == 2  # a transfer on MongoDB
    assert active("s1")["owner"] == "bob"


def test_a_remembered_envelope_never_decides_a_refusal():
    """A process decides on the envelope it saw last only to write; a refusal is decided on what Redis holds."""
    workbench.save("s1", {"n": 1}, owner="alice")
    seen_alice = _envelope._recall("s1")
    workbench.save("s1", {"n": 2}, owner="bob", expected_owner="alice")
    seen_bob = _envelope._recall("s1")
    # Another process transferred it to bob; this one last saw alice's: bob's save still succeeds.
    _envelope._remember("s1", seen_alice)
    assert workbench.save("s1", {"n": 3}, owner="bob") == 3
    workbench.save("s1", {"n": 4}, owner="alice", expected_owner="bob")
    # And the other way round: this one last saw bob's, but alice owns it again: bob is refused.
    _envelope._remember("s1", seen_bob)
    with pytest.raises(workbench.OwnerConflict):
        workbench.save("s1", {"n": "bob's"}, owner="bob")
    assert workbench.load("s1").state == {"n": 4}


def _race(n, work):
    """Run ``work(i)`` in n threads started together; return [(i, result or exception)]."""
    barrier = threading.Barrier(n)
    results = [None] * n

    def run(i):
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_creations_by_different_owners_leave_exactly_one_owner(store):
    results = _race(6, lambda i: workbench.save("s1", {"by": i}, owner=f"user{i}"))
    winners = [i for i, r in enumerate(results) if r == 1]
    refused = [r for r in results if isinstance(r, workbench.OwnerConflict)]
    assert len(winners) == 1 and len(refused) == 5, results
    session = workbench.load("s1")
    assert (session.owner, session.state, session.version) == (f"user{winners[0]}", {"by": winners[0]}, 1)


def test_concurrent_transfers_from_the_same_owner_let_exactly_one_through(store):
    workbench.save("s1", {"n": 0}, owner="alice")
    results = _race(6, lambda i: workbench.save("s1", {"to": i}, owner=f"user{i}", expected_owner="alice"))
    winners = [i for i, r in enumerate(results) if r == 2]
    assert len(winners) == 1 and sum(isinstance(r, workbench.OwnerConflict) for r in results) == 5, results
    session = workbench.load("s1")
    assert (session.owner, session.version) == (f"user{winners[0]}", 2)


def test_concurrent_saves_of_the_owner_and_an_intruder_never_change_the_owner(store):
    workbench.save("s1", {"n": 0}, owner="alice")
    results = _race(6, lambda i: workbench.save("s1", {"n": i}, owner="alice" if i % 2 else "mallory"))
    assert all(isinstance(r, workbench.OwnerConflict) for i, r in enumerate(results) if i % 2 == 0), results
    assert all(isinstance(r, int) for i, r in enumerate(results) if i % 2), results
    session = workbench.load("s1")
    assert session.owner == "alice" and session.version == 4


def test_over_http_another_owner_answers_409_naming_the_owner_field(client, store):
    workbench.save("s1", {"n": 1}, owner="alice")
    response = client.post("/workbench/s1/save", '{"state": {"x": 1}, "owner": "mallory"}',
                           content_type="application/json")
    assert response.status_code == 409 and response.json()["field"] == "owner"
    assert "alice" not in response.content.decode()
    response = client.post("/workbench/s1/save", '{"state": {"x": 1}, "owner": "bob", "expected_owner": "alice"}',
                           content_type="application/json")
    assert response.status_code == 200 and workbench.load("s1").owner == "bob"
    response = client.post("/workbench/s1/save", '{"state": {}, "owner": "bob", "expected_owner": ["alice"]}',
                           content_type="application/json")
    assert response.status_code == 400 and response.json()["field"] == "expected_owner"
