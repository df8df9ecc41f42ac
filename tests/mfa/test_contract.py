"""The MFA code contract, run over both stores: the real Redis and the MongoDB fallback (Redis down)."""

from __future__ import annotations

import threading

import pytest

from hotcache import mfa
from hotcache.exceptions import InvalidName
from hotcache.mfa import Reason
from hotcache.testing import count_redis
from tests.mfa.support import wrong


class RedisStore:
    """Time passes on the Redis server too: every mfa key's TTL shrinks (or runs out) by ``seconds``."""

    name = "redis"

    def __init__(self, raw, clock, prefix):
        self.raw, self.clock, self.prefix = raw, clock, prefix

    def advance(self, seconds):
        self.clock.advance(seconds)
        for key in self.raw.scan_iter(match=f"{self.prefix}:{{mfa:*", count=1000):
            left = self.raw.pttl(key)
            if left < 0:
                continue
            if left <= seconds * 1000:
                self.raw.pexpireat(key, 1)  # a time in the past: the server expires the key now
            else:
                self.raw.pexpire(key, left - int(seconds * 1000))


class MongoStore:
    """Redis refuses connections, so everything runs on the MongoDB fallback; time is the frozen clock."""

    name = "mongodb"

    def __init__(self, clock):
        self.clock = clock

    def advance(self, seconds):
        self.clock.advance(seconds)


@pytest.fixture(params=["redis", "mongodb", "mongodb-real"])
def store(request, clock, raw_redis, key_prefix):
    """Redis; the MongoDB fallback on the in-process stand-in; the same on a real MongoDB server."""
    if request.param == "redis":
        return RedisStore(raw_redis, clock, key_prefix)
    if request.param == "mongodb-real":
        request.getfixturevalue("real_mongo")
    request.getfixturevalue("redis_down")
    return MongoStore(clock)


# --- the contract, per store ---------------------------------------------------------------------


def test_correct_code_verifies_exactly_once(store):
    code = mfa.issue("alice")
    first = mfa.verify("alice", code)
    assert first and first.reason is Reason.OK and first.store == store.name
    again = mfa.verify("alice", code)
    assert not again and again.reason is Reason.EXPIRED_OR_MISSING


def test_code_has_configured_digits_and_comes_from_digits_only(store, hotcache_config):
    hotcache_config(MFA_DIGITS=8)
    code = mfa.issue("alice")
    assert len(code) == 8 and code.isdigit()
    assert mfa.verify("alice", code)


def test_wrong_code_is_invalid_and_counts_an_attempt(store):
    code = mfa.issue("alice")
    result = mfa.verify("alice", wrong(code))
    assert not result and result.reason is Reason.INVALID and result.attempts_left == 4
    assert mfa.verify("alice", code)


def test_wrong_guesses_at_the_limit_burn_the_code(store):
    code = mfa.issue("alice")
    reasons = [mfa.verify("alice", wrong(code)) for _ in range(5)]
    assert [r.reason for r in reasons] == [Reason.INVALID] * 4 + [Reason.TOO_MANY_ATTEMPTS]
    assert reasons[-1].burned
    later = mfa.verify("alice", code)
    assert not later and later.reason is Reason.TOO_MANY_ATTEMPTS


@pytest.mark.parametrize("cap", [1, 3, 7])
def test_mfa_max_attempts_wrong_guesses_burn_the_code(store, hotcache_config, cap):
    """The attempt cap is MFA_MAX_ATTEMPTS on either store: the cap-th wrong guess burns the code."""
    hotcache_config(MFA_MAX_ATTEMPTS=cap)
    code = mfa.issue("alice")
    results = [mfa.verify("alice", wrong(code)) for _ in range(cap)]
    assert [r.reason for r in results] == [Reason.INVALID] * (cap - 1) + [Reason.TOO_MANY_ATTEMPTS]
    assert [r.attempts_left for r in results[:-1]] == list(range(cap - 1, 0, -1))
    assert results[-1].burned and {r.store for r in results} == {store.name}
    later = mfa.verify("alice", code)
    assert not later and later.reason is Reason.TOO_MANY_ATTEMPTS


@pytest.mark.parametrize("cap", [1, 3, 7])
def test_mfa_max_attempts_minus_one_wrong_guesses_leave_the_code_usable(store, hotcache_config, cap):
    """One wrong guess fewer than MFA_MAX_ATTEMPTS, on either store, and the right code still succeeds once."""
    hotcache_config(MFA_MAX_ATTEMPTS=cap)
    code = mfa.issue("alice")
    for left in range(cap - 1, 0, -1):
        result = mfa.verify("alice", wrong(code))
        assert result.reason is Reason.INVALID and result.attempts_left == left
    ok = mfa.verify("alice", code)
    assert ok and ok.store == store.name
    assert mfa.verify("alice", code).reason is Reason.EXPIRED_OR_MISSING


def test_code_still_verifies_just_before_expiry(store):
    code = mfa.issue("alice")
    store.advance(299)
    assert mfa.verify("alice", code)


def test_expired_code_fails(store):
    code = mfa.issue("alice")
    store.advance(301)
    result = mfa.verify("alice", code)
    assert not result and result.reason is Reason.EXPIRED_OR_MISSING


def test_never_issued_code_is_missing(store):
    result = mfa.verify("nobody", "123456")
    assert not result and result.reason is Reason.EXPIRED_OR_MISSING


def test_issuing_replaces_the_earlier_code(store):
    old = mfa.issue("alice")
    store.advance(31)
    new = mfa.issue("alice")
    if new == old:  # one chance in a million
        new = (store.advance(31), mfa.issue("alice"))[1]
    assert mfa.verify("alice", old).reason is Reason.INVALID
    assert mfa.verify("alice", new)


def test_resend_inside_the_cooldown_raises_with_retry_after(store):
    mfa.issue("alice")
    store.advance(10)
    with pytest.raises(mfa.ResendTooSoon) as exc:
        mfa.issue("alice")
    assert exc.value.reason == "cooldown" and 19 <= exc.value.retry_after <= 20
    store.advance(21)
    assert mfa.issue("alice")


def test_hourly_send_cap(store):
    for _ in range(5):
        mfa.issue("alice")
        store.advance(31)
    with pytest.raises(mfa.ResendTooSoon) as exc:
        mfa.issue("alice")
    assert exc.value.reason == "hourly_cap"
    assert 3600 - 5 * 31 - 1 <= exc.value.retry_after <= 3600 - 5 * 31 + 1
    store.advance(exc.value.retry_after)
    assert mfa.issue("alice")


def test_user_failure_cap_blocks_even_the_correct_code_until_the_window_ends(store):
    failures = 0
    while failures < 10:
        code = mfa.issue("alice")
        for _ in range(min(4, 10 - failures)):
            assert mfa.verify("alice", wrong(code)).reason is Reason.INVALID
            failures += 1
        if failures < 10:
            store.advance(31)
    blocked = mfa.verify("alice", code)
    assert not blocked and blocked.reason is Reason.TOO_MANY_ATTEMPTS
    assert blocked.retry_after is not None and 0 < blocked.retry_after <= 900
    store.advance(900)
    fresh = mfa.issue("alice")
    assert mfa.verify("alice", fresh)


def test_codes_are_per_user_and_per_purpose(store):
    code = mfa.issue("alice")
    assert mfa.verify("bob", code).reason is Reason.EXPIRED_OR_MISSING
    assert mfa.verify("alice", code, purpose="reset").reason is Reason.EXPIRED_OR_MISSING
    assert mfa.verify("alice", code)


def test_user_ids_with_separators_do_not_reach_other_users(store):
    code = mfa.issue("a:b")
    assert mfa.verify("a", code).reason is Reason.EXPIRED_OR_MISSING
    assert mfa.verify("a_b", code).reason is Reason.EXPIRED_OR_MISSING
    assert mfa.verify("a:b", code)


def test_integer_user_ids_are_accepted(store):
    code = mfa.issue(42)
    assert mfa.verify("42", code)


def test_malformed_codes_are_invalid_without_counting_an_attempt(store):
    code = mfa.issue("alice")
    for bad in ("12345", "1234567", "abcdef", "", None, 123456):
        assert mfa.verify("alice", bad).reason is Reason.INVALID
    assert mfa.verify("alice", wrong(code)).attempts_left == 4


def test_spaces_typed_inside_the_code_are_ignored(store):
    code = mfa.issue("alice")
    assert mfa.verify("alice", f" {code[:3]} {code[3:]} ")


@pytest.mark.parametrize("user", ["", "a b", "x" * 200, "{tag}", "a\nb", True, 1.5, None])
def test_invalid_user_ids_are_rejected(user):
    with pytest.raises(InvalidName):
        mfa.issue(user)
    with pytest.raises(InvalidName):
        mfa.verify(user, "123456")


@pytest.mark.parametrize("purpose", ["", "a:b", "a|b", "x" * 33, "log in"])
def test_invalid_purposes_are_rejected(purpose):
    with pytest.raises(InvalidName):
        mfa.issue("alice", purpose=purpose)


def test_verify_result_is_a_frozen_value():
    result = mfa.VerifyResult(True, Reason.OK)
    with pytest.raises(AttributeError):
        result.ok = False  # type: ignore[misc]
    assert [r.value for r in Reason] == ["ok", "invalid", "expired_or_missing", "too_many_attempts", "unavailable"]


def test_events_are_metered(store):
    code = mfa.issue("alice")
    with count_redis() as counted:
        mfa.verify("alice", wrong(code))
        mfa.verify("alice", code)
        mfa.verify("alice", code)
        with pytest.raises(mfa.ResendTooSoon):
            mfa.issue("alice")
    assert counted.events["mfa:failed"] == 1
    assert counted.events["mfa:verified"] == 1
    assert counted.events["mfa:expired"] == 1
    assert counted.events["mfa:resend_blocked"] == 1
    if store.name == "mongodb":
        assert counted.events["mfa:fallback"] == 4


def race(users, n_threads):
    """For each user: issue one code, then n_threads verify it at once. Returns the success counts."""
    barrier = threading.Barrier(n_threads + 1, timeout=60)
    results = [None] * n_threads
    current = {"user": None, "code": None}

    def worker(i):
        while True:
            barrier.wait()
            if current["user"] is None:
                return
            results[i] = mfa.verify(current["user"], current["code"])
            barrier.wait()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n_threads)]
    for t in threads:
        t.start()
    successes = []
    try:
        for user in users:
            current["user"], current["code"] = user, mfa.issue(user)
            barrier.wait()  # go
            barrier.wait()  # all done
            successes.append(sum(1 for r in results if r))
            assert all(r.reason in (Reason.OK, Reason.EXPIRED_OR_MISSING, Reason.TOO_MANY_ATTEMPTS) for r in results)
        current["user"] = None
        barrier.wait()
    finally:
        if current["user"] is not None:
            barrier.abort()
        for t in threads:
            t.join(timeout=10)
    return successes


def test_concurrent_verifications_of_the_right_code_succeed_exactly_once(store):
    rounds = 100 if store.name == "redis" else 10  # the MongoDB stand-in serialises every call anyway
    successes = race([f"race-{i}" for i in range(rounds)], 50)
    assert successes == [1] * rounds
