"""Rate limiting core against the real Redis: exact admission under concurrency, sliding window at the
edge, all-or-nothing, deny cache, TTLs, server time."""

import multiprocessing
import random
import struct
import threading
import uuid

import pytest

from hotcache import ratelimit as rl
from hotcache.ratelimit import InvalidRate, Limit, evaluate, limit_keys, parse_rate
from hotcache.ratelimit.state import local_state
from hotcache.testing import count_redis, reset
from tests.ratelimit.fixtures import child_hammer


@pytest.fixture(autouse=True)
def _fresh_ratelimit_state():
    reset()
    yield
    reset()


def ident():
    return uuid.uuid4().hex


def read_counter(raw_redis, key):
    """A counter as the script stores it: (window id, even window's count, odd window's count)."""
    return struct.unpack(">qqq", raw_redis.get(key))


def write_counter(raw_redis, key, w, counts):
    """Store window ``w`` with ``counts`` ({window id: count}) in the script's layout."""
    even = sum(v for k, v in counts.items() if k % 2 == 0)
    odd = sum(v for k, v in counts.items() if k % 2 == 1)
    raw_redis.set(key, struct.pack(">qqq", w, even, odd))


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ("100/m", (100, 60)),
        ("5/10s", (5, 10)),
        ("1000/5m", (1000, 300)),
        ("10000/d", (10000, 86400)),
        ("7/h", (7, 3600)),
        ("3/2hour", (3, 7200)),
        ((4, 30), (4, 30)),
    ],
)
def test_parse_rate_accepts_counts_multipliers_and_units(rate, expected):
    assert parse_rate(rate) == expected


@pytest.mark.parametrize("rate", ["", "abc", "10/x", "/m", "10/0s", "-1/m", (1, 0), 5, "10/m/s"])
def test_parse_rate_rejects_garbage(rate):
    with pytest.raises(InvalidRate):
        parse_rate(rate)


def test_exactly_limit_admitted_from_many_threads():
    lim = Limit("threads", ident(), 50, 86400)
    evaluate([Limit("warm", ident(), 10, 60)])
    barrier = threading.Barrier(16)
    admitted = []

    def worker():
        barrier.wait()
        admitted.append(sum(1 for _ in range(12) if evaluate([lim]).allowed))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 50


def _run_processes(skews, *, limit=40, attempts=25):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(skews))
    out = ctx.Queue()
    key = ident()
    procs = [ctx.Process(target=child_hammer, args=((barrier, key, limit, 86400, attempts, s, out),)) for s in skews]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return results


def test_exactly_limit_admitted_from_several_processes_with_skewed_clocks():
    # Four processes whose own clocks disagree by up to two hours: Redis TIME decides, so together they
    # admit exactly the limit.
    results = _run_processes([-3600.0, -5.0, 5.0, 3600.0])
    assert sum(results) == 40


def test_skewed_local_clock_does_not_change_decisions(clock):
    a, b = Limit("skew", ident(), 3, 60), None
    first = [evaluate([a]).allowed for _ in range(2)]
    clock.advance(-7200)  # this process's clock jumps two hours back: the server's window is unchanged
    b = [evaluate([a]).allowed for _ in range(2)]
    assert first + b == [True, True, True, False]


def test_denied_request_does_not_count():
    lim = Limit("nocount", ident(), 2, 86400)
    assert [evaluate([lim]).allowed for _ in range(5)] == [True, True, False, False, False]
    rl.reset_local_state()  # bypass the deny cache: Redis itself must still say 2
    d = evaluate([lim], increment=False)
    assert d.results[0].count == 3 and not d.allowed


def test_all_or_nothing_across_rules(raw_redis):
    who = ident()
    tight, loose = Limit("tight", who, 2, 86400), Limit("loose", who, 100, 86400)
    outcomes = [evaluate([tight, loose]).allowed for _ in range(5)]
    assert outcomes == [True, True, False, False, False]
    (key,) = limit_keys(loose)
    _, even, odd = read_counter(raw_redis, key)
    assert sorted(v for v in (even, odd) if v) == [2]  # the denied requests did not count
    d = evaluate([loose], increment=False)
    assert d.results[0].remaining == 97


def test_all_or_nothing_matches_a_model_over_random_sequences():
    rng = random.Random(3)
    who = ident()
    rules = [Limit(f"r{i}", who, rng.randint(2, 12), 86400) for i in range(4)]
    used = {r.name: 0 for r in rules}
    for _ in range(150):
        chosen = rng.sample(rules, rng.randint(1, 4))
        expected = all(used[r.name] + 1 <= r.limit for r in chosen)
        rl.reset_local_state()  # compare Redis's own answer each time
        assert evaluate(chosen).allowed is expected
        if expected:
            for r in chosen:
                used[r.name] += 1


def test_one_round_trip_for_three_rules():
    who = ident()
    rules = [Limit(n, who, 100, 60) for n in ("a", "b", "c")]
    evaluate(rules)  # warm: connection handshake and script load
    with count_redis() as c:
        d = evaluate(rules)
    assert d.allowed
    assert c.round_trips == 1 and c.commands == 1


def test_deny_cache_refuses_with_zero_redis_calls():
    lim = Limit("deny", ident(), 1, 3600)
    assert evaluate([lim]).allowed
    assert not evaluate([lim]).allowed  # Redis says no; cached until reset
    with count_redis() as c:
        outcomes = [evaluate([lim]).allowed for _ in range(1000)]
    assert not any(outcomes)
    assert c.commands == 0 and c.round_trips == 0
    assert c.events["ratelimit:denied_local"] == 1000


def test_deny_cache_expires_at_reset_and_asks_redis_again(clock):
    lim = Limit("deny-exp", ident(), 1, 3600)
    evaluate([lim])
    d = evaluate([lim])
    clock.advance(d.results[0].reset + 0.01)
    with count_redis() as c:
        assert not evaluate([lim]).allowed  # still over on the server (its clock did not move)
    assert c.round_trips == 1


def test_deny_cache_is_bounded_and_evicts_oldest(hotcache_config):
    hotcache_config(RATELIMIT_DENY_CACHE_SIZE=3)
    limits = [Limit("b", ident(), 1, 3600) for _ in range(5)]
    for lim in limits:
        evaluate([lim])
        evaluate([lim])
    assert len(local_state().deny_cache) == 3
    with count_redis() as c:
        evaluate([limits[0]])  # evicted: Redis is asked
        evaluate([limits[4]])  # cached: no call
    assert c.round_trips == 1


def test_deny_cache_never_allows_a_larger_or_different_request():
    who = ident()
    lim = Limit("w", who, 5, 3600, cost=3)
    assert evaluate([lim]).allowed
    assert not evaluate([lim]).allowed  # 3 + 3 > 5
    small = Limit("w", who, 5, 3600, cost=1)
    assert evaluate([small]).allowed  # a cost-1 request still fits: the cache does not refuse it
    with count_redis() as c:
        assert not evaluate([lim]).allowed
    assert c.round_trips == 0


def test_weighted_cost_counts_units():
    lim = Limit("cost", ident(), 10, 3600, cost=4)
    assert [evaluate([lim]).allowed for _ in range(3)] == [True, True, False]
    assert evaluate([Limit("cost", lim.identifier, 10, 3600, cost=2)]).results[0].remaining == 0


def test_every_key_has_a_ttl_within_two_windows(raw_redis, key_prefix):
    who = ident()
    for n, window in (("k1", 10), ("k2", 3600), ("k3", 86400)):
        for _ in range(3):
            evaluate([Limit(n, who, 2, window)])
    found = list(raw_redis.scan_iter(match=f"{key_prefix}:{{ratelimit:*", count=1000))
    assert found
    for key in found:
        ttl = raw_redis.pttl(key)
        assert ttl > 0, key
    k3 = [k for k in limit_keys(Limit("k3", who, 2, 86400)) if raw_redis.exists(k)]
    assert 86400_000 < raw_redis.pttl(k3[0]) <= 2 * 86400_000


def test_storage_is_one_small_string_whatever_the_limit(raw_redis):
    lim = Limit("big", ident(), 70_000, 86400)
    for _ in range(50):
        evaluate([lim])
    keys = limit_keys(lim)
    assert len(keys) == 1
    assert raw_redis.strlen(keys[0]) == 24  # the window id and the two window counts, nothing per request
    _, even, odd = read_counter(raw_redis, keys[0])
    assert sorted(v for v in (even, odd) if v) == [50]
    assert raw_redis.memory_usage(keys[0]) <= 200  # bytes, key name included


def test_peek_does_not_count():
    lim = Limit("peek", ident(), 2, 3600)
    for _ in range(3):
        assert evaluate([lim], increment=False).allowed
    assert [evaluate([lim]).allowed for _ in range(3)] == [True, True, False]


def _server_ms(raw_redis):
    s, us = raw_redis.time()
    return s * 1000 + us // 1000


def test_boundary_burst_never_admits_twice_the_limit(raw_redis):
    """A full burst at the end of one window and another right after the edge: far below 2x the limit."""
    limit, window_ms = 40, 1000
    for _attempt in range(5):
        lim = Limit("edge", ident(), limit, 1)
        evaluate([Limit("warm", ident(), 5, 1)])
        # wait (on the server's clock) for the last 15% of a window
        while _server_ms(raw_redis) % window_ms < 850:
            pass
        start_window = _server_ms(raw_redis) // window_ms
        first = sum(1 for _ in range(limit) if evaluate([lim]).allowed)
        if _server_ms(raw_redis) // window_ms != start_window:
            continue  # the burst itself straddled the edge; try again
        while _server_ms(raw_redis) // window_ms == start_window:
            pass
        rl.reset_local_state()
        second = 0
        for _ in range(2 * limit):
            rl.reset_local_state()  # ask Redis every time
            second += evaluate([lim]).allowed
        elapsed = _server_ms(raw_redis) % window_ms
        assert first == limit
        # the previous window's burst still weighs (1 - elapsed/window): only the decayed part is free
        assert second <= limit * elapsed / window_ms + 1
        assert first + second < 2 * limit
        return
    pytest.fail("could not place a burst inside the end of a window")


def _window_id(raw_redis, window_s):
    return _server_ms(raw_redis) // (window_s * 1000)


def test_a_hash_left_from_two_windows_ago_counts_as_empty(raw_redis):
    """Stale state (e.g. visible past its expiry instant under lazy expiry) is recognised by its window id."""
    lim = Limit("stale", ident(), 3, 86400)
    (key,) = limit_keys(lim)
    w = _window_id(raw_redis, 86400)
    raw_redis.set(key, struct.pack(">qqq", w - 2, 1_000_000, 1_000_000))
    raw_redis.pexpire(key, 60_000)
    assert [evaluate([lim]).allowed for _ in range(4)] == [True, True, True, False]
    assert read_counter(raw_redis, key)[0] == w
    assert 86400_000 < raw_redis.pttl(key) <= 2 * 86400_000


def test_the_previous_window_is_weighted_into_the_estimate(raw_redis):
    lim = Limit("prevw", ident(), 10, 86400)
    (key,) = limit_keys(lim)
    w = _window_id(raw_redis, 86400)
    write_counter(raw_redis, key, w - 1, {w - 1: 10**9, w: 0})
    raw_redis.pexpire(key, 60_000)
    before = raw_redis.get(key)
    d = evaluate([lim])
    assert not d.allowed and d.results[0].remaining == 0
    assert raw_redis.get(key) == before  # a denied request writes nothing (its speculative increment undone)


def test_a_window_ahead_of_the_server_clock_keeps_its_counts(raw_redis):
    """If the server clock ever steps back (failover), admissions already counted are not forgotten."""
    lim = Limit("ahead", ident(), 5, 86400)
    (key,) = limit_keys(lim)
    w = _window_id(raw_redis, 86400)
    write_counter(raw_redis, key, w + 1, {w + 1: 4, w: 0})
    raw_redis.pexpire(key, 60_000)
    assert [evaluate([lim]).allowed for _ in range(2)] == [True, False]
    stored, even, odd = read_counter(raw_redis, key)
    assert stored == w + 1 and (odd, even) == ((5, 0) if (w + 1) % 2 else (0, 5))


def test_rules_on_one_identifier_share_a_cluster_slot():
    who = ident()
    tags = {limit_keys(Limit(n, who, 5, w))[0].split("}")[0] for n, w in (("burst", 10), ("sustained", 3600))}
    assert len(tags) == 1  # one hash tag: one slot, so one EVALSHA also works on Redis Cluster
    assert limit_keys(Limit("burst", who, 5, 10)) != limit_keys(Limit("sustained", who, 5, 10))
    assert limit_keys(Limit("burst", who, 5, 10)) != limit_keys(Limit("burst", who, 5, 60))
    tag = limit_keys(Limit("burst", "a:b}{c", 5, 10))[0].split("{", 1)[1].split("}")[0]
    assert tag.startswith("ratelimit:~") and len(tag) == len("ratelimit:~") + 32  # hostile input is digested


def test_a_refusal_by_a_later_rule_undoes_the_earlier_rules_increments(raw_redis):
    """The script adds each rule's cost speculatively; a later rule's refusal must leave every counter as it was."""
    who = ident()
    loose, tight = Limit("loose1", who, 100, 86400), Limit("tight1", who, 1, 86400)
    assert evaluate([loose, tight]).allowed
    (key,) = limit_keys(loose)
    before = raw_redis.get(key)
    rl.reset_local_state()
    assert not evaluate([loose, tight]).allowed
    assert raw_redis.get(key) == before
    fresh = Limit("fresh1", who, 100, 86400)
    rl.reset_local_state()  # Redis decides, not the deny cache
    assert not evaluate([fresh, tight]).allowed  # a counter the speculation created is deleted again
    assert not raw_redis.exists(limit_keys(fresh)[0])
    assert evaluate([loose], increment=False).results[0].remaining == 98  # 1 counted + this peek's 1


def test_counters_of_the_old_hash_layout_are_ignored_not_misread(raw_redis, key_prefix):
    """Upgrading from the hash layout restarts counters once (docs/ratelimit.md); an old hash is never read."""
    from hotcache import keys

    lim = Limit("upgrade", ident(), 2, 86400)
    old = keys.tagged("ratelimit", lim.identifier, lim.name, lim.window)
    raw_redis.hset(old, mapping={"w": 1, "0": 2, "1": 2})
    raw_redis.pexpire(old, 60_000)
    assert old not in limit_keys(lim)
    assert [evaluate([lim]).allowed for _ in range(3)] == [True, True, False]
