"""The lost-reply and recovery protocol's shared machinery (hotcache.recovery)."""

from __future__ import annotations

import logging
import os
import threading

from hotcache import recovery
from hotcache.backends import mongo


def test_writer_names_this_process_and_thread() -> None:
    seen: list[str] = []
    t = threading.Thread(target=lambda: seen.append(recovery.writer()))
    t.start()
    t.join()
    assert recovery.writer().startswith(recovery.process_nonce() + ":")
    assert seen[0] != recovery.writer()
    assert seen[0].split(":")[0] == recovery.process_nonce()


def test_a_forked_child_is_a_new_writer_that_owes_nothing() -> None:
    doubts: recovery.InDoubt[str] = recovery.InDoubt()
    owed: recovery.Deferred[str] = recovery.Deferred()
    notice = recovery.OutageNotice()
    doubts.add(recovery.writer(), "lost call")
    owed.add("user:1")
    notice.owe("fence-token")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports what it inherited
        os.close(read)
        report = f"{recovery.process_nonce()}|{len(doubts)}|{len(owed)}|{notice.owed()[1]}"
        os.write(write, report.encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 200).decode()
    os.waitpid(pid, 0)
    nonce, n_doubts, n_owed, is_owed = child.split("|")
    assert nonce != recovery.process_nonce()
    assert (n_doubts, n_owed, is_owed) == ("0", "0", "False")
    assert len(doubts) == 1 and "user:1" in owed and notice.owed()[1]  # the parent keeps its own


def test_a_stale_settle_never_drops_a_newer_doubt() -> None:
    doubts: recovery.InDoubt[object] = recovery.InDoubt()
    first, second = object(), object()
    doubts.add("w", first)
    doubts.add("w", second)
    assert not doubts.settled("w", first)
    assert doubts.get("w") is second
    assert doubts.settled("w", second)
    assert not doubts


def test_deferred_writes_added_during_a_replay_stay_owed() -> None:
    owed: recovery.Deferred[str] = recovery.Deferred()
    owed.add("a", "b")
    replaying = owed.snapshot()
    owed.add("c")
    owed.done(replaying)
    assert owed.snapshot() == {"c"}


def test_bounded_deferred_writes_drop_the_oldest_and_say_how_many() -> None:
    owed: recovery.Deferred[str] = recovery.Deferred(max_items=3)
    assert owed.add("a", "b") == 0
    assert owed.add("a") == 0  # already owed: keeps its place
    assert owed.update(["c", "d", "e"]) == 2
    assert list(owed) == ["c", "d", "e"]
    owed.max_items = None
    assert owed.add("f") == 0 and len(owed) == 4


def test_deferred_writes_older_than_max_age_are_forgotten_at_the_snapshot() -> None:
    from hotcache.testing import frozen_clock

    owed: recovery.Deferred[str] = recovery.Deferred()
    with frozen_clock() as clock:
        owed.add("old")
        clock.advance(30)
        owed.add("new", "old")  # "old" keeps the age it was first owed at
        clock.advance(31)
        assert owed.snapshot() == {"old", "new"}
        assert owed.snapshot(max_age=60) == {"new"}
        assert "old" not in owed


def test_deferred_counts_subtract_what_was_replayed() -> None:
    owed: recovery.DeferredCounts[str] = recovery.DeferredCounts()
    owed.add("k", 2)
    replaying = owed.snapshot()
    owed.add("k")
    owed.done(replaying)
    assert owed.snapshot() == {"k": 1}
    owed.done({"k": 1})
    assert not owed


def test_counts_taken_are_owed_by_nobody_else_until_given_back() -> None:
    """take() claims everything at once: a second replayer finds nothing (an $inc is never sent twice); what
    could not be written is added back, with what was owed meanwhile."""
    owed: recovery.DeferredCounts[str] = recovery.DeferredCounts()
    owed.add("k", 2)
    taken = owed.take()
    assert taken == {"k": 2} and not owed and owed.take() == {}
    owed.add("k")
    for key, n in taken.items():
        owed.add(key, n)  # the write failed
    assert owed.snapshot() == {"k": 3}


def test_an_outage_notice_sent_for_an_older_outage_keeps_the_newer_one_owed() -> None:
    notice = recovery.OutageNotice()
    generation = notice.owe("t1")
    newer = notice.owe("t2")
    assert not notice.sent(generation)
    assert notice.owed() == (newer, True, "t2")
    assert notice.sent(newer)
    assert notice.owed()[1] is False


def test_an_outage_notice_is_owed_when_the_gate_opened() -> None:
    opens = [0]
    notice = recovery.OutageNotice(gate_opens=lambda: opens[0])
    assert notice.owed()[1] is False
    opens[0] = 1
    generation, is_owed, _ = notice.owed()
    assert is_owed
    assert notice.sent(generation)
    assert notice.owed()[1] is False


def test_bulk_retries_duplicate_rows_once_as_the_feature_rewrites_them() -> None:
    coll = mongo.collection("recovery_test", feature="tests")
    coll.create_index([("k", 1)], unique=True)
    coll.bulk([mongo.Insert({"k": "a", "n": 1})])
    ops = [
        mongo.Update({"k": "a", "n": {"$lt": 0}}, {"$inc": {"n": 1}}, upsert=True),  # E11000: "a" exists
        mongo.Update({"k": "b"}, {"$inc": {"n": 1}}, upsert=True),
    ]

    def as_plain_update(op: mongo.Update | mongo.Insert) -> mongo.Update | mongo.Insert:
        assert isinstance(op, mongo.Update)
        return mongo.Update({"k": op.filter["k"]}, op.update, upsert=False)

    result = recovery.bulk_retrying_duplicates(coll, ops, as_plain_update)
    assert result.round_trips == 2
    assert result.applied == 2
    assert result.still_duplicate == set()
    assert {d["k"]: d["n"] for d in coll.find({})} == {"a": 2, "b": 1}


def test_bulk_without_duplicates_is_one_round_trip() -> None:
    coll = mongo.collection("recovery_test2", feature="tests")
    result = recovery.bulk_retrying_duplicates(coll, [mongo.Insert({"k": 1})], lambda op: op)
    assert (result.round_trips, result.applied, result.still_duplicate) == (1, 1, set())


def test_testing_new_process_forgets_every_registry() -> None:
    from hotcache import testing

    doubts: recovery.InDoubt[str] = recovery.InDoubt()
    owed: recovery.Deferred[str] = recovery.Deferred()
    notice = recovery.OutageNotice()
    doubts.add("w", "x")
    owed.add("y")
    notice.owe()
    testing.new_process()
    assert not doubts and not owed and notice.owed()[1] is False


def test_a_watermark_only_rises_and_a_new_process_starts_at_zero() -> None:
    from hotcache import testing

    mark = recovery.Watermark()
    assert mark.value == 0
    assert mark.raise_to(2000) == 2000
    assert mark.raise_to(1000) == 2000
    assert mark.value == 2000
    testing.new_process()
    assert mark.value == 0


def test_a_forked_child_starts_with_a_zero_watermark() -> None:
    mark = recovery.Watermark()
    mark.raise_to(5)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, str(mark.value).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 20).decode()
    os.waitpid(pid, 0)
    assert child == "0" and mark.value == 5  # the parent keeps its own


def test_last_applied_remembers_per_writer_and_is_forgotten_with_the_process() -> None:
    from hotcache import testing

    last: recovery.LastApplied[tuple[str, float]] = recovery.LastApplied()
    last.set("w1", ("token-1", 1.0))
    last.set("w1", ("token-2", 2.0))
    last.set("w2", ("token-9", 3.0))
    assert last.get("w1") == ("token-2", 2.0) and last.get("nobody") is None
    last.forget("w2")
    assert last.get("w2") is None and len(last) == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, str(len(last)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 10).decode()
    os.waitpid(pid, 0)
    assert child == "0" and last.get("w1") == ("token-2", 2.0)  # the child is a new writer
    testing.new_process()
    assert len(last) == 0


class _Buffer(recovery.ProcessLocal):
    def __init__(self) -> None:
        self.other_lock = threading.Lock()
        super().__init__()
        self.items: list[str] = []

    def _renew_locks(self) -> None:
        super()._renew_locks()
        self.other_lock = threading.Lock()

    def _forget(self) -> None:
        self.items = []


def test_process_local_state_is_forgotten_in_a_forked_child_with_fresh_locks() -> None:
    from hotcache import testing

    buffer = _Buffer()
    buffer.items.append("owed to MongoDB")
    held = threading.Event()
    release = threading.Event()

    def hold_both() -> None:  # another thread holds the locks while the process forks
        with buffer._lock, buffer.other_lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold_both)
    t.start()
    assert held.wait(10)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        free = buffer._lock.acquire(timeout=1) and buffer.other_lock.acquire(timeout=1)
        os.write(write, f"{len(buffer.items)}|{free}".encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 20).decode()
    os.waitpid(pid, 0)
    release.set()
    t.join(10)
    assert child == "0|True"
    assert buffer.items == ["owed to MongoDB"]  # the parent keeps (and writes out) its own
    testing.new_process()
    assert buffer.items == []


def test_recent_keeps_the_last_stored_values_up_to_its_bound_and_a_new_process_forgets_them():
    recent = recovery.Recent[str, int](max_items=2)
    recent.put("a", 1)
    recent.put("b", 2)
    recent.put("a", 3)  # stored again: now the most recent
    recent.put("c", 4)  # over the bound: the least recently stored ("b") is dropped
    assert (recent.get("a"), recent.get("b"), recent.get("c")) == (3, None, 4)
    recent.pop("a")
    recent.pop("missing")
    assert recent.get("a") is None and len(recent) == 1
    recovery.forget_all()
    assert recent.get("c") is None and len(recent) == 0


def test_a_forked_child_never_waits_on_the_parents_daemon_wake_event() -> None:
    """A periodic buffer's daemon takes its wake event's lock as it sleeps and wakes: a fork at that instant copies
    the lock held, and the child (which has no daemon to stop) must not wait on it while forgetting the buffer."""
    import select
    import signal

    from hotcache.periodic import PeriodicBuffer

    class Buffer(PeriodicBuffer[list[str]]):
        thread_name = "test-periodic"
        log = logging.getLogger("test")
        failure_message = "test"

        def interval(self) -> float:
            return 60.0

        def _empty(self) -> None:
            self.items: list[str] = []

        def _take(self) -> list[str]:
            items, self.items = self.items, []
            return items

        def _write(self, taken: list[str]) -> int:
            return len(taken)

    buffer = Buffer()
    read, write = os.pipe()
    with buffer._wake._cond:  # type: ignore[attr-defined]  # held at the fork, as the daemon holds it in Event.wait
        pid = os.fork()
        if pid == 0:
            os.close(read)
            os.write(write, b"forgotten")  # reached only once the at-fork hooks returned
            os._exit(0)
    os.close(write)
    ready, _, _ = select.select([read], [], [], 10)  # a guard against a child stuck in its at-fork hook
    if not ready:
        os.kill(pid, signal.SIGKILL)
    child = os.read(read, 20) if ready else b""
    os.close(read)
    os.waitpid(pid, 0)
    assert child == b"forgotten"
