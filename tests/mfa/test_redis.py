"""MFA on the real Redis: round trips, TTLs, nothing recoverable at rest, and behaviour across outages."""

from __future__ import annotations

import pytest

from hotcache import keys, mfa, signing
from hotcache.backends import mongo
from hotcache.conf import hotcache_settings
from hotcache.mfa import Reason, _codes, _conf, _fallback, _hot, _marker
from hotcache.testing import count_redis, mongo_down, new_process
from tests.mfa.support import wrong
from tests.support.targets import per_master, warm_every_master


def warm():
    from hotcache.backends import redis as redis_backend

    redis_backend.call("bench", lambda r: r.ping())


def test_issue_and_verify_take_one_round_trip_each_and_no_mongodb():
    warm()
    with count_redis() as issued:
        code = mfa.issue("alice")
    with count_redis() as verified:
        assert mfa.verify("alice", code)
    assert issued.round_trips == 1 and issued.commands == 1 and issued.by_feature["mfa"] == 1
    # verify: the Lua script and a GET of the outage marker, pipelined (module docstring)
    assert verified.round_trips == 1 and verified.commands == 2 and verified.by_feature["mfa"] == 2
    assert issued.mongo_ops == 0 and verified.mongo_ops == 0


def healthy_verify_cost(user, code):
    warm()
    _fallback.collection()  # index creation, once per process (not part of the cost)
    with count_redis() as counted:
        result = mfa.verify(user, code)
    return result, counted


def test_a_wrong_guess_costs_one_round_trip_and_no_mongodb():
    code = mfa.issue("alice")
    result, counted = healthy_verify_cost("alice", wrong(code))
    assert result.reason is Reason.INVALID
    assert (counted.round_trips, counted.commands, counted.mongo_ops) == (1, 2, 0)


def test_an_expired_code_costs_one_round_trip_and_no_mongodb(raw_redis):
    code = mfa.issue("alice")
    assert raw_redis.pexpireat(keys.tagged("mfa", "alice", "login", "code"), 1)
    result, counted = healthy_verify_cost("alice", code)
    assert result.reason is Reason.EXPIRED_OR_MISSING
    assert (counted.round_trips, counted.commands, counted.mongo_ops) == (1, 2, 0)


def test_a_replay_costs_one_round_trip_and_no_mongodb():
    code = mfa.issue("alice")
    assert mfa.verify("alice", code)
    result, counted = healthy_verify_cost("alice", code)
    assert result.reason is Reason.EXPIRED_OR_MISSING
    assert (counted.round_trips, counted.commands, counted.mongo_ops) == (1, 2, 0)


def test_guesses_for_users_without_a_code_cost_no_mongodb():
    warm_every_master(_hot.VERIFY)  # the users' codes live on every master of a cluster
    _fallback.collection()
    with count_redis() as counted:
        for i in range(20):  # the amplification attempt: wrong codes for many users
            assert mfa.verify(f"user{i}", "123456").reason is Reason.EXPIRED_OR_MISSING
    assert (counted.round_trips, counted.mongo_ops) == (20, 0)


def test_a_code_ends_with_the_code_ttl_and_its_key_with_the_last_window(raw_redis, hotcache_config, clock):
    hotcache_config(MFA_CODE_TTL=120)
    code = mfa.issue("alice")
    key = keys.tagged("mfa", "alice", "login", "code")
    # One hash holds the code and the user's windows: it lives as long as the longest (the hour of sends).
    assert 3_599_000 < raw_redis.pttl(key) <= 3_600_000
    clock.advance(120)  # the code's lifetime is over, whatever the key's TTL
    assert mfa.verify("alice", code).reason is Reason.EXPIRED_OR_MISSING
    assert raw_redis.hget(key, "d") is None


def test_every_key_mfa_writes_has_a_ttl(raw_redis, key_prefix):
    code = mfa.issue("alice")
    mfa.verify("alice", wrong(code))
    mfa.verify("alice", code)
    written = list(raw_redis.scan_iter(match=f"{key_prefix}:{{mfa:*"))
    assert len(written) == 1  # the code record and the user's windows share one hash
    assert all(raw_redis.pttl(k) > 0 for k in written)


def test_a_code_issued_before_the_upgrade_still_verifies_once(raw_redis, clock):
    """A record written by the earlier layout (a hash of d/a/iat/st/s alone with the code's TTL, windows in
    keys of their own) reads the same: the code handed out before a deploy verifies once after it."""
    from hotcache.mfa import _codes

    now = int(clock.time() * 1000)
    code = "123456"
    digest = _codes.digest("alice", "login", code)
    key = keys.tagged("mfa", "alice", "login", "code")
    raw_redis.hset(
        key,
        mapping={
            "d": digest,
            "a": 0,
            "iat": now,
            "st": "live",
            "s": _codes.record_signature("alice", "login", digest, now),
        },
    )
    raw_redis.pexpire(key, 300_000)
    raw_redis.set(keys.tagged("mfa", "alice", "login", "fails"), 1, px=900_000)  # the old window: not read
    clock.advance(10)
    result = mfa.verify("alice", wrong(code))
    assert result.reason is Reason.INVALID and result.attempts_left == 4
    assert mfa.verify("alice", code)
    assert mfa.verify("alice", code).reason is Reason.EXPIRED_OR_MISSING


def test_server_side_expiry_ends_the_code(raw_redis):
    code = mfa.issue("alice")
    # An expiry time in the past: the server expires the key at once (no sleeping for a TTL to run out).
    assert raw_redis.pexpireat(keys.tagged("mfa", "alice", "login", "code"), 1)
    assert mfa.verify("alice", code).reason is Reason.EXPIRED_OR_MISSING


def _everything_stored(raw_redis, key_prefix):
    """Every key name and value under this run's prefix, and every MongoDB document, as text."""
    blobs = []
    for key in raw_redis.scan_iter(match=f"{key_prefix}:*", count=1000):
        blobs.append(key)
        kind = raw_redis.type(key)
        if kind == b"string":
            blobs.append(raw_redis.get(key) or b"")
        elif kind == b"hash":
            for f, v in raw_redis.hgetall(key).items():
                blobs += [f, v]
        elif kind == b"list":
            blobs += raw_redis.lrange(key, 0, -1)
        elif kind == b"set":
            blobs += list(raw_redis.smembers(key))
        elif kind == b"zset":
            blobs += [m for m, _ in raw_redis.zrange(key, 0, -1, withscores=True)]
    db = mongo._current().client[mongo.database_name()]
    for name in db.list_collection_names():
        blobs += [repr(doc).encode() for doc in db[name].find()]
    return [b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b) for b in blobs]


def test_nothing_stored_reveals_a_live_code(raw_redis, key_prefix, redis_proxy, clock, hotcache_config):
    hotcache_config(MFA_DIGITS=10)  # 10 digits: no chance that a timestamp happens to contain a code
    live = [mfa.issue(f"user{i}") for i in range(5)]
    tried = mfa.issue("tried")
    mfa.verify("tried", wrong(tried))
    used = mfa.issue("used")
    mfa.verify("used", used)
    redis_proxy.down()
    live += [mfa.issue(f"outage{i}") for i in range(3)]
    mfa.verify("outage0", wrong(live[-3]))
    redis_proxy.up()
    clock.advance(hotcache_settings.HEALTH_COOLDOWN)
    live.append(tried)
    stored = _everything_stored(raw_redis, key_prefix)
    assert any("{mfa:" in s for s in stored) and any("mfa_codes" in s or "outage" in s for s in stored)
    for code in [*live, used]:
        assert not any(code in s for s in stored), "a code is stored in plaintext"


# --- across Redis outages ------------------------------------------------------------------------


def recover(proxy, clock):
    proxy.up()
    clock.advance(hotcache_settings.HEALTH_COOLDOWN)  # let the health gate probe again


@pytest.mark.mongo_contract
def test_code_issued_before_an_outage_verifies_after_redis_returns(redis_proxy, clock):
    code = mfa.issue("alice")
    redis_proxy.down()
    during = mfa.verify("alice", code)
    assert not during and during.store == "mongodb"  # MongoDB cannot see a code held in Redis
    recover(redis_proxy, clock)
    after = mfa.verify("alice", code)
    assert after and after.store == "redis"
    assert mfa.verify("alice", code).reason is Reason.EXPIRED_OR_MISSING


@pytest.mark.mongo_contract
def test_code_issued_during_an_outage_verifies_once_after_redis_returns(redis_proxy, clock):
    redis_proxy.down()
    code = mfa.issue("alice")
    recover(redis_proxy, clock)
    with count_redis() as counted:
        result = mfa.verify("alice", code)
    assert result and result.store == "mongodb" and counted.round_trips >= 1  # Redis was asked first
    assert mfa.verify("alice", code).reason is Reason.EXPIRED_OR_MISSING


@pytest.mark.mongo_contract
def test_wrong_guesses_during_an_outage_still_burn_the_code_after_it(redis_proxy, clock):
    redis_proxy.down()
    code = mfa.issue("alice")
    for _ in range(4):
        assert mfa.verify("alice", wrong(code)).reason is Reason.INVALID
    recover(redis_proxy, clock)
    assert mfa.verify("alice", wrong(code)).reason is Reason.TOO_MANY_ATTEMPTS
    assert mfa.verify("alice", code).reason is Reason.TOO_MANY_ATTEMPTS


@pytest.mark.mongo_contract
def test_a_code_issued_during_an_outage_supersedes_the_redis_one(redis_proxy, clock):
    old = mfa.issue("alice")
    redis_proxy.down()
    clock.advance(40)
    new = mfa.issue("alice")
    recover(redis_proxy, clock)
    assert mfa.verify("alice", new)
    assert not mfa.verify("alice", old)  # the older Redis code was removed when the newer one succeeded


@pytest.mark.mongo_contract
def test_a_code_issued_after_the_outage_supersedes_the_mongodb_one(redis_proxy, clock):
    redis_proxy.down()
    old = mfa.issue("alice")
    recover(redis_proxy, clock)
    clock.advance(40)
    new = mfa.issue("alice")
    if new == old:
        pytest.skip("the two random codes collided (one chance in a million)")
    assert mfa.verify("alice", old).reason is Reason.INVALID
    assert mfa.verify("alice", new)
    assert not mfa.verify("alice", old)


@pytest.mark.mongo_contract
def test_a_replayed_mongodb_code_fails_after_a_newer_redis_code_was_used(redis_proxy, clock):
    redis_proxy.down()
    old = mfa.issue("alice")
    recover(redis_proxy, clock)
    clock.advance(40)
    assert mfa.verify("alice", mfa.issue("alice"))
    assert not mfa.verify("alice", old)  # the Redis tombstone is newer than the MongoDB code


# --- the outage marker: MongoDB is consulted on a Redis miss only while it may hold a live code -----


def marker(raw_redis):
    """The marker's T (its value is a signed record)."""
    values = {raw_redis.get(copy) for copy in _marker.marker_keys()}  # on a cluster every copy holds the same T
    assert len(values) == 1
    value = values.pop()
    return int(signing.unseal("mfa.marker", "mongo_live_until", value)) if value else 0


def now_ms(clock):
    return int(clock.time() * 1000)


def test_the_first_call_after_an_outage_publishes_the_marker_in_its_round_trip(redis_proxy, clock, raw_redis):
    redis_proxy.down()
    mfa.issue("alice")
    recover(redis_proxy, clock)
    warm_every_master(_hot.ISSUE, _hot.MARK)
    copies = _marker.marker_keys()  # the one key; on a cluster a copy per sixteenth of the slots
    with count_redis() as first:
        mfa.issue("bob")
    # the issue script and the marker script, pipelined (on a cluster: every copy, one round trip per master)
    assert (first.round_trips, first.commands) == (per_master(1), 1 + len(copies))
    assert marker(raw_redis) == now_ms(clock) + hotcache_settings.MFA_CODE_TTL * 1000
    assert all(raw_redis.pttl(copy) > 0 for copy in copies)
    with count_redis() as second:
        mfa.issue("carol")
    assert (second.round_trips, second.commands) == (1, 1)  # published once


def test_the_marker_only_moves_forward(raw_redis):
    from hotcache.backends import redis as redis_backend

    key = _marker.marker_keys()[0]  # the one key; on a cluster its first copy

    def mark(until):
        sealed = signing.seal("mfa.marker", "mongo_live_until", str(until))
        stored = redis_backend.call("mfa", lambda r: _hot.MARK(r, [key], [sealed, until, 60_000]))
        return int(signing.unseal("mfa.marker", "mongo_live_until", stored))

    assert mark(2000) == 2000
    assert mark(1000) == 2000
    assert mark(3000) == 3000
    assert 0 < raw_redis.pttl(key) <= 60_000


def test_scripts_unknown_to_the_server_are_sent_once_inside_the_pipeline(redis_proxy, clock, monkeypatch):
    redis_proxy.down()
    code = mfa.issue("alice")
    recover(redis_proxy, clock)
    # As after SCRIPT FLUSH or a failover: EVALSHA answers NOSCRIPT, the script body follows (EVAL).
    monkeypatch.setattr(_hot.VERIFY, "sha", "0" * 40)
    monkeypatch.setattr(_hot.MARK, "sha", "1" * 40)
    assert mfa.verify("alice", code).store == "mongodb"  # the pipeline carried VERIFY and MARK
    assert mfa.verify("alice", code).reason is Reason.EXPIRED_OR_MISSING


@pytest.mark.mongo_contract
def test_another_process_verifies_an_outage_code_through_the_marker(redis_proxy, clock):
    redis_proxy.down()
    code = mfa.issue("alice")
    recover(redis_proxy, clock)
    mfa.issue("bob")  # this process's first mfa call after the outage publishes the marker
    new_process()  # from here on: a process that never saw the outage
    result = mfa.verify("alice", code)
    assert result and result.store == "mongodb"
    assert mfa.verify("alice", code).reason is Reason.EXPIRED_OR_MISSING


def test_the_issuing_process_knows_without_the_marker(redis_proxy, clock, raw_redis):
    redis_proxy.down()
    code = mfa.issue("alice")
    recover(redis_proxy, clock)
    mfa.issue("bob")
    raw_redis.delete(*_marker.marker_keys())  # evicted, say
    assert mfa.verify("alice", code).store == "mongodb"


def test_a_process_that_saw_the_outage_publishes_for_one_that_died(redis_proxy, clock):
    redis_proxy.down()
    code = mfa.issue("alice")  # process A issues on MongoDB...
    new_process()  # ...and dies before Redis returns
    assert mfa.verify("bob", "123456").store == "mongodb"  # process B serves a request during the outage
    recover(redis_proxy, clock)
    mfa.verify("bob", "123456")  # B's first mfa call after the outage publishes the marker
    new_process()  # process C never saw the outage
    assert mfa.verify("alice", code)


def test_a_gate_opened_by_another_feature_also_makes_the_process_publish(redis_proxy, clock):
    from hotcache.backends import redis as redis_backend
    from hotcache.exceptions import RedisUnavailable

    redis_proxy.down()
    with pytest.raises(RedisUnavailable):
        redis_backend.call("users", lambda r: r.ping())  # this process's only contact with the outage
    # Meanwhile a process that then died issued a code on MongoDB (what its fallback writes):
    code = "424242"
    conf = _conf.limits()
    _fallback.issue("alice", "login", _codes.digest("alice", "login", code), now_ms(clock), conf)
    recover(redis_proxy, clock)
    mfa.issue("bob")  # the gate opened since this process's last mfa call: publish
    new_process()
    assert mfa.verify("alice", code)


@pytest.mark.mongo_contract
def test_without_any_witness_an_outage_code_fails_closed(redis_proxy, clock):
    redis_proxy.down()
    code = mfa.issue("alice")
    new_process()  # the only process that saw the outage died before Redis returned
    recover(redis_proxy, clock)
    warm()
    _fallback.collection()
    with count_redis() as counted:
        result = mfa.verify("alice", code)
    assert not result and result.reason is Reason.EXPIRED_OR_MISSING and result.store == "redis"
    assert counted.mongo_ops == 0  # the residual gap (module docstring): the user asks for a new code


@pytest.mark.mongo_contract
def test_misses_stop_consulting_mongodb_once_outage_codes_have_expired(redis_proxy, clock):
    redis_proxy.down()
    mfa.issue("alice")
    recover(redis_proxy, clock)
    code = mfa.issue("bob")  # publishes T = now + MFA_CODE_TTL
    warm()
    _fallback.collection()
    with count_redis() as during:
        assert mfa.verify("bob", wrong(code)).reason is Reason.INVALID
    assert (during.round_trips, during.mongo_ops) == (1, 1)  # MongoDB may still hold a live code
    clock.advance(hotcache_settings.MFA_CODE_TTL)  # T: every code issued on MongoDB has expired
    later = mfa.issue("carol")
    for forget in (False, True):  # this process, and one that only knows the marker
        if forget:
            new_process()
        with count_redis() as after:
            assert mfa.verify("carol", wrong(later)).reason is Reason.INVALID
        assert (after.round_trips, after.mongo_ops) == (1, 0)


def test_both_stores_down_verify_fails_closed(redis_down):
    with mongo_down(), count_redis() as counted:
        result = mfa.verify("alice", "123456")
    assert not result and result.reason is Reason.UNAVAILABLE
    assert counted.events["mfa:unavailable"] == 1


def test_both_stores_down_issue_raises_a_hotcache_error(redis_down):
    with mongo_down(), pytest.raises(mfa.MfaUnavailable) as exc:
        mfa.issue("alice")
    assert "Redis and MongoDB" in str(exc.value)


def test_mongodb_down_does_not_matter_while_redis_is_up():
    with mongo_down():
        code = mfa.issue("alice")
        assert mfa.verify("alice", wrong(code)).reason is Reason.INVALID
        assert mfa.verify("alice", code)


# --- races between processes on the real Redis ----------------------------------------------------


def _verify_in_process(index, barrier, user, code):
    barrier.wait()
    result = mfa.verify(user, code)
    return result.ok, result.reason.value, result.store, result.burned


def test_one_code_verified_by_8_processes_on_redis_succeeds_exactly_once():
    from tests.support.processes import race

    code = mfa.issue("alice")
    results = race(8, _verify_in_process, "alice", code)
    assert [r[0] for r in results].count(True) == 1, results
    assert {r[1] for r in results if not r[0]} == {"expired_or_missing"}
    assert {r[2] for r in results} == {"redis"}


def test_wrong_guesses_from_8_processes_count_each_attempt_once(raw_redis):
    from tests.support.processes import race

    code = mfa.issue("bob")
    results = race(8, _verify_in_process, "bob", wrong(code))
    reasons = sorted(r[1] for r in results)
    # MFA_MAX_ATTEMPTS = 5: four answers "invalid", the fifth burns the code, the rest meet a burned code.
    assert reasons.count("invalid") == 4 and [r[3] for r in results].count(True) == 1, results
    assert raw_redis.hget(keys.tagged("mfa", "bob", "login", "code"), "a") == b"5"
    assert int(raw_redis.hget(keys.tagged("mfa", "bob", "login", "code"), "f")) == 5
    assert mfa.verify("bob", code).reason is Reason.TOO_MANY_ATTEMPTS
