"""sliding_window_giveback.lua against the real Redis: a give-back takes exactly the cost off the window it was
counted in while that window is still held, never below zero, never creates or retypes a key (issue 18: rate
limiting across cluster slots; the cluster path itself is tested in tests/cluster/test_ratelimit_slots.py)."""

from __future__ import annotations

import struct
import uuid

import pytest

from hotcache.backends import redis as redis_backend
from hotcache.ratelimit import slots
from hotcache.testing import count_redis, reset


@pytest.fixture(autouse=True)
def _fresh():
    reset()
    yield
    reset()


TAG = uuid.uuid4().hex  # one identifier: one script's keys share a slot (so this also runs on a cluster)


def key(key_prefix: str) -> str:
    return f"{key_prefix}:{{ratelimit:{TAG}}}:r{uuid.uuid4().hex}:60:b"


def write(raw_redis, k: str, w: int, even: int, odd: int) -> None:
    raw_redis.set(k, struct.pack(">qqq", w, even, odd), px=600_000)


def read(raw_redis, k: str) -> tuple[int, int, int] | None:
    raw = raw_redis.get(k)
    return None if raw is None else struct.unpack(">qqq", raw)


def give_back(keys: list[str], args: list[int]) -> int:
    return int(redis_backend.call("ratelimit", lambda r: slots._GIVEBACK(r, keys, args)))


W = 1_000_000  # an even window id


def test_the_cost_comes_off_the_window_it_was_counted_in(raw_redis, key_prefix):
    a, b = key(key_prefix), key(key_prefix)
    write(raw_redis, a, W, 5, 2)  # window W (even) holds 5
    write(raw_redis, b, W + 1, 7, 3)  # window W+1 (odd) holds 3, W (even) 7
    give_back([a, b], [W, 2, W + 1, 1])  # warm: the script is loaded
    write(raw_redis, a, W, 5, 2)
    write(raw_redis, b, W + 1, 7, 3)
    with count_redis() as c:
        assert give_back([a, b], [W, 2, W + 1, 1]) == 2
    assert read(raw_redis, a) == (W, 3, 2)
    assert read(raw_redis, b) == (W + 1, 7, 2)
    assert c.billed_by_feature["ratelimit"] == 3  # EVALSHA + one BITFIELD per rule
    assert raw_redis.pttl(a) > 0  # the expiry is kept


def test_a_window_that_moved_on_keeps_its_count_as_the_previous_one(raw_redis, key_prefix):
    k = key(key_prefix)
    write(raw_redis, k, W + 1, 4, 1)  # the next window's first write kept W's 4 as the previous count
    assert give_back([k], [W, 1]) == 1
    assert read(raw_redis, k) == (W + 1, 3, 1)


def test_a_window_no_longer_held_is_left_alone(raw_redis, key_prefix):
    k = key(key_prefix)
    write(raw_redis, k, W + 2, 4, 1)  # W's count is gone: the even field is W+2's own
    assert give_back([k], [W, 1]) == 0
    assert read(raw_redis, k) == (W + 2, 4, 1)


def test_never_below_zero(raw_redis, key_prefix):
    k = key(key_prefix)
    write(raw_redis, k, W, 1, 0)
    assert give_back([k], [W, 3]) == 1
    assert read(raw_redis, k) == (W, 0, 0)
    assert give_back([k], [W, 1]) == 0
    assert read(raw_redis, k) == (W, 0, 0)


def test_a_missing_or_foreign_key_is_never_created_or_changed(raw_redis, key_prefix):
    gone, other = key(key_prefix), key(key_prefix)
    raw_redis.hset(other, "x", "1")
    assert give_back([gone, other], [W, 1, W, 1]) == 0
    assert raw_redis.exists(gone) == 0
    assert raw_redis.type(other) == b"hash" and raw_redis.hgetall(other) == {b"x": b"1"}
