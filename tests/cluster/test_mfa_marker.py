"""The MFA outage marker on a Redis Cluster (issue 18): written to one copy per sixteenth of the slots, read from the
copy on the code record's node, so a verify (script + marker GET) stays one round trip on any master."""

from __future__ import annotations

import uuid

import pytest

from hotcache import clock as hc_clock
from hotcache import keys, mfa, signing
from hotcache.backends import redis as redis_backend
from hotcache.mfa import Reason, _codes, _conf, _hot, _marker
from hotcache.testing import count_redis, new_process


@pytest.fixture(autouse=True)
def _no_marker(cluster_redis):
    """The session's cluster is shared: no marker copy from earlier tests, no outage remembered."""
    client = redis_backend.get_client()
    client.delete(*_marker.marker_keys())
    new_process()
    yield
    client.delete(*_marker.marker_keys())
    new_process()


def code_key(user: str) -> str:
    return keys.tagged("mfa", user, "login", "code")


def users_on_every_master(n: int) -> list[str]:
    """``n`` users whose code records are spread over all three masters."""
    client = redis_backend.get_client()
    for _ in range(100):
        users = [f"u{uuid.uuid4().hex[:10]}" for _ in range(n)]
        if len({client.get_node_from_key(code_key(u)).name for u in users}) == 3:
            return users
    raise AssertionError("100 draws of users never reached all three masters")


def test_the_copies_cover_every_master():
    client = redis_backend.get_client()
    copies = _marker.marker_keys()
    assert len(copies) == _marker.COPIES == 16
    assert len({client.keyslot(k) // 1024 for k in copies}) == 16  # one per sixteenth of the slots
    assert len({client.get_node_from_key(k).name for k in copies}) == 3


def test_guesses_for_users_on_every_master_cost_one_round_trip_each():
    users = users_on_every_master(20)
    redis_backend.call("bench", lambda r: [r.ping(target_nodes=r.get_primaries())])
    client = redis_backend.get_client()
    one_per_master = {client.get_node_from_key(code_key(u)).name: u for u in users}
    for user in one_per_master.values():
        mfa.verify(user, "123456")  # the verify script loaded on every master
    with count_redis() as counted:
        for user in users:
            assert mfa.verify(user, "123456").reason is Reason.EXPIRED_OR_MISSING
    assert (counted.round_trips, counted.commands, counted.mongo_ops) == (20, 40, 0)  # 45 round trips before


def test_a_published_marker_is_in_every_copy_and_each_verify_reads_the_copy_near_it():
    client = redis_backend.get_client()
    now = _conf.now_ms()
    ttl_ms = _conf.limits().ttl_ms
    _marker.saw_outage(now, ttl_ms)  # this process fell back to MongoDB: it owes the marker
    mfa.issue(f"u{uuid.uuid4().hex[:10]}")  # its next mfa call publishes it (and loads mfa_mark.lua everywhere)
    for user in users_on_every_master(12):
        mfa.issue(user)  # the issue script loaded on every master
    _marker.saw_outage(now, ttl_ms)
    with count_redis() as published:
        mfa.issue(f"u{uuid.uuid4().hex[:10]}")
    # the issue script and a MARK of each copy, one pipeline: one round trip per master, once per outage
    assert (published.round_trips, published.commands) == (3, 17)
    assert published.billed_by_feature["mfa"] == 4 + 16 * 4  # the issue; per copy EVALSHA, TYPE, GET, SET
    until = now + ttl_ms
    for copy in _marker.marker_keys():
        assert int(signing.unseal("mfa.marker", "mongo_live_until", client.get(copy))) >= until
        assert client.pttl(copy) > 0
    # A different T in each copy: a verify reports the one on its code record's node.
    for i, copy in enumerate(_marker.marker_keys()):
        client.set(copy, _marker.seal(until + i), px=60_000)
    new_process()  # a process that never saw the outage knows T from the marker only
    conf = _conf.limits()
    for user in users_on_every_master(12):
        near = _marker.marker_key_near(client, code_key(user))
        assert client.get_node_from_key(near).name == client.get_node_from_key(code_key(user)).name
        digest = _codes.digest(user, "login", "123456")
        _hot.verify(user, "login", digest, _conf.now_ms(), conf)  # the verify script loaded on that master
        with count_redis() as counted:
            answer = _hot.verify(user, "login", digest, _conf.now_ms(), conf)
        assert answer.marker_ms == until + _marker.marker_keys().index(near)
        assert counted.round_trips == 1


def test_a_verify_whose_reply_is_lost_is_not_sent_again(monkeypatch):
    """redis-py's cluster pipeline re-sends the commands of a node whose reply timed out: a wrong guess would count
    twice (a right code, consumed by the first run, would answer ``used``). The verify pipeline sends once."""
    from redis.cluster import NodeCommands
    from redis.exceptions import TimeoutError as RedisTimeout

    user = f"u{uuid.uuid4().hex[:10]}"
    code = mfa.issue(user)
    wrong = "0" * len(code) if code != "0" * len(code) else "1" * len(code)
    assert mfa.verify(user, wrong).reason is Reason.INVALID  # the verify script loaded on that master
    client = redis_backend.get_client()
    assert client.hget(code_key(user), "a") == b"1"
    read, lost = NodeCommands.read, []

    def losing(self):
        read(self)
        if not lost and any(c.args[:2] == ("EVALSHA", _hot.VERIFY.sha) for c in self.commands):
            lost.append(1)
            self.connection.disconnect()
            for c in self.commands:
                c.result = RedisTimeout("Timeout reading from socket (test: reply lost)")

    monkeypatch.setattr(NodeCommands, "read", losing)
    mfa.verify(user, wrong)  # Redis counted the guess; its reply is lost (MongoDB then answers)
    assert lost
    assert client.hget(code_key(user), "a") == b"2"  # counted once, not twice


def test_publishing_to_masters_that_know_no_script_loads_it_once_per_master(monkeypatch):
    """A fresh or failed-over master knows no script: every copy of the marker on it answers NOSCRIPT. Before, each
    was sent again with EVAL, one round trip per copy (here 19 round trips, 33 commands; 9 at most now):
    the script is loaded on every master and the refused copies sent again together."""
    import hashlib

    fresh = redis_backend.Script("mfa_mark")  # the same script under a SHA no node has cached
    fresh.body = f"{fresh.body}\n-- {uuid.uuid4().hex}\n"
    fresh.sha = hashlib.sha1(fresh.body.encode()).hexdigest()
    monkeypatch.setattr(_hot, "MARK", fresh)
    user = f"u{uuid.uuid4().hex[:10]}"
    code = mfa.issue(user)  # the verify script's node connected; the issue script loaded there
    _marker.saw_outage(int(hc_clock.time() * 1000), 60_000)  # this process owes the marker
    redis_backend.call("test", lambda r: r.ping(target_nodes=r.get_primaries()))
    redis_backend.call("test", lambda r: r.script_load(_hot.VERIFY.body))
    with count_redis() as counted:
        assert mfa.verify(user, code)
    copies = _marker.marker_keys()
    client = redis_backend.get_client()
    assert all(client.get(copy) is not None for copy in copies)  # published in every copy
    # the pipeline (per master), SCRIPT LOAD (per master), the refused copies again (per master)
    assert counted.round_trips <= 3 + 3 + 3
    assert counted.commands == 1 + len(copies) + 3 + (len(copies))  # every copy refused once, then sent again
