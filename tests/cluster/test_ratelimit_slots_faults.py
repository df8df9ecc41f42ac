"""Rate limiting across cluster slots when something goes wrong (issue 18): a give-back whose reply is lost is never
sent again (the counts are given back once, never twice; redis-py's own cluster pipeline would re-send a timed-out
node's commands one by one), and a reply of another shape is an outage decision, never a 500."""

from __future__ import annotations

import pytest
from redis.cluster import NodeCommands
from redis.exceptions import TimeoutError as RedisTimeout

from hotcache.backends import cluster
from hotcache.ratelimit import Limit, evaluate, slots
from hotcache.testing import count_redis, reset
from tests.cluster.test_ratelimit_slots import counted, identifiers_on_two_masters


@pytest.fixture(autouse=True)
def _fresh(cluster_redis, hotcache_config):
    hotcache_config(RATELIMIT_DENY_CACHE_SIZE=0)
    reset()
    yield
    reset()


@pytest.fixture
def lose_giveback_reply(monkeypatch):
    """The next give-back runs on its node, then its reply is lost (read, dropped, the connection closed)."""
    read = NodeCommands.read
    lost = []

    def losing(self):
        read(self)
        ran = [
            c
            for c in self.commands
            if c.args[1] in (slots._GIVEBACK.sha, slots._GIVEBACK.body) and not isinstance(c.result, Exception)
        ]
        if not lost and ran:
            lost.append(self.connection.port)
            self.connection.disconnect()
            for c in self.commands:
                c.result = RedisTimeout("Timeout reading from socket (test: reply lost)")

    monkeypatch.setattr(NodeCommands, "read", losing)
    return lost


def test_a_lost_giveback_reply_gives_back_once(lose_giveback_reply):
    ip, user = identifiers_on_two_masters()
    by_ip, by_user = Limit("per-ip", ip, 10, 3600), Limit("per-user", user, 1, 3600)
    assert evaluate([by_ip, by_user]).allowed
    assert evaluate([by_ip, Limit("per-user", f"{user}-2", 1, 3600)]).allowed
    assert (counted(by_ip), counted(by_user)) == (2, 1)
    with count_redis() as c:
        decision = evaluate([by_ip, by_user])
    assert not decision.allowed and decision.degraded is None  # Redis decided: the denial stands
    assert lose_giveback_reply  # the give-back ran and its reply was lost
    assert counted(by_ip) == 2  # given back once (3 -> 2), not twice
    assert c.events["ratelimit:giveback_failed"] == 1 and c.events["ratelimit:given_back"] == 0
    give_backs = c.commands - 2  # the two groups' EVALSHAs, then the give-back: sent once (EVAL once if NOSCRIPT)
    assert give_backs in (1, 2)


def test_a_group_reply_of_another_shape_is_an_outage_decision_not_a_500(monkeypatch):
    ip, user = identifiers_on_two_masters()
    real = cluster.send_once
    monkeypatch.setattr(cluster, "send_once", lambda r, commands: [[1, "not a list"] for _ in real(r, commands)])
    decision = evaluate([Limit("per-ip", ip, 10, 3600), Limit("per-user", user, 10, 3600)])
    assert decision.allowed and decision.degraded == "redis_unavailable"
    assert [r.source for r in decision.results] == ["local", "local"]
