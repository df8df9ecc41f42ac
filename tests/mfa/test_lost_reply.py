"""An issue whose reply was lost (Redis may have stored the code): the code handed out still succeeds at most
once across the outage, and the record Redis may hold is burned when Redis answers again."""

from __future__ import annotations

import pytest

from hotcache import keys, mfa
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.mfa import Reason, _codes, _hot
from hotcache.testing import count_redis, new_process
from tests.support.targets import per_master, warm_every_master

# MongoDB-facing contracts: each test runs on the stand-in and on a real server ([standin] / [real]).
pytestmark = pytest.mark.mongo_contract


def lose_the_next_issue_reply(proxy, raw_redis, mode):
    raw_redis.script_load(_hot.ISSUE.body)  # EVALSHA is then the one command that carries the script
    proxy.arm(_hot.ISSUE.sha.encode(), mode)


def recover(clock):
    """The lost reply opened the health gate: let it probe again (a PING of another feature, not mfa)."""
    clock.advance(float(hotcache_settings.HEALTH_COOLDOWN) + 1)
    redis_backend.call("t", lambda r: r.ping())


def code_key(user="alice"):
    return keys.tagged("mfa", user, "login", "code")


def test_a_code_whose_issue_reply_was_lost_succeeds_once_on_mongodb_and_never_again_on_redis(
    lost_reply_proxy, raw_redis, clock
):
    lose_the_next_issue_reply(lost_reply_proxy, raw_redis, "apply")
    code = mfa.issue("alice")
    assert lost_reply_proxy.lost == ["apply"] and raw_redis.exists(code_key())  # Redis stored a code
    during = mfa.verify("alice", code)
    assert during and during.store == "mongodb"
    recover(clock)
    after = mfa.verify("alice", code)
    assert not after and after.reason is Reason.EXPIRED_OR_MISSING


def test_a_code_whose_issue_reply_was_lost_succeeds_once_after_redis_returns(lost_reply_proxy, raw_redis, clock):
    lose_the_next_issue_reply(lost_reply_proxy, raw_redis, "apply")
    code = mfa.issue("alice")
    recover(clock)
    first = mfa.verify("alice", code)
    assert first and first.store == "mongodb"
    assert mfa.verify("alice", code).reason is Reason.EXPIRED_OR_MISSING
    new_process()  # another process, which knows only the marker
    assert not mfa.verify("alice", code)


def test_the_code_redis_may_hold_is_never_handed_out_and_is_burned_when_redis_returns(
    lost_reply_proxy, raw_redis, clock
):
    lose_the_next_issue_reply(lost_reply_proxy, raw_redis, "apply")
    with count_redis() as lost:
        code = mfa.issue("alice")
    assert (lost.events["mfa:in_doubt"], lost.events["mfa:fallback"], lost.events["mfa:issued"]) == (1, 1, 1)
    stored = raw_redis.hgetall(code_key())
    assert stored[b"d"].decode() != _codes.digest("alice", "login", code)  # the code handed out is another
    recover(clock)
    warm_every_master(_hot.DROP, _hot.VERIFY, _hot.MARK)  # scripts cached, as on a long-running server
    with count_redis() as burning:
        mfa.verify("bob", "123456")  # this process's next mfa call that reaches Redis burns it first
    assert raw_redis.hget(code_key(), "d") is None  # the record is gone (the send it counted stays)
    # the burn, then the verify pipeline (publishing the marker: on a cluster every copy, one round trip per master)
    assert burning.round_trips == 1 + per_master(1)
    with count_redis() as after:
        mfa.verify("bob", "123456")
    assert after.round_trips == 1  # burned once
    assert mfa.verify("alice", code)  # the code handed out, from MongoDB


def test_an_issue_lost_before_redis_stored_it_is_one_mongodb_code(lost_reply_proxy, raw_redis, clock):
    lose_the_next_issue_reply(lost_reply_proxy, raw_redis, "drop")
    code = mfa.issue("alice")
    assert lost_reply_proxy.lost == ["drop"] and not raw_redis.exists(code_key())
    recover(clock)
    result = mfa.verify("alice", code)
    assert result and result.store == "mongodb"
    assert mfa.verify("alice", code).reason is Reason.EXPIRED_OR_MISSING


def test_a_wrong_guess_after_a_lost_issue_never_succeeds_on_either_store(lost_reply_proxy, raw_redis, clock):
    lose_the_next_issue_reply(lost_reply_proxy, raw_redis, "apply")
    code = mfa.issue("alice")
    guess = f"{(int(code) + 1) % 10**6:06d}"
    assert mfa.verify("alice", guess).reason is Reason.INVALID
    recover(clock)
    assert mfa.verify("alice", guess).reason is Reason.INVALID
    assert mfa.verify("alice", code)
