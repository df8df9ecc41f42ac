"""The lean path (hotcache.backends.lean via redis.lean_call): per-thread connections, fork-safe, on the same
gate, meter, NOSCRIPT fallback, timeouts and lost-reply protocol as call(). Counts, never timings."""

from __future__ import annotations

import gc
import os
import threading
import uuid

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from hotcache.backends import lean
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import redis_gate
from hotcache.exceptions import RedisUnavailable
from hotcache.ratelimit.core import evaluate
from hotcache.ratelimit.limits import Limit
from hotcache.testing import count_redis
from tests.support.lost_reply import LostReplyProxy


def _client_id() -> int:
    return int(redis_backend.lean_call("t", lambda r: r.execute_command("CLIENT", "ID")))


def test_the_per_request_calls_get_this_threads_own_connection_not_the_pool():
    seen = redis_backend.lean_call("t", lambda r: r)
    assert isinstance(seen, lean.LeanClient)
    first = _client_id()
    assert _client_id() == first  # the same connection, call after call
    assert redis_backend.lean_connections() == 1
    pooled = redis_backend.call("t", lambda r: int(r.execute_command("CLIENT", "ID")))
    assert pooled != first  # the pool's connections are not the lean ones


def test_each_thread_has_its_own_connection_and_closes_it_when_it_ends():
    mine = _client_id()
    ids: list[int] = []
    started = threading.Barrier(3)
    done = threading.Event()

    def worker() -> None:
        ids.append(_client_id())
        started.wait()
        done.wait()
        ids.append(_client_id())

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    started.wait()
    assert redis_backend.lean_connections() == 3  # this thread's and both workers', open together
    done.set()
    for t in threads:
        t.join()
    gc.collect()
    assert len(set(ids)) == 2 and mine not in ids  # one connection per thread, each reused by its thread
    assert redis_backend.lean_connections() == 1  # the ended threads' connections were closed


def test_a_rate_limit_decision_on_the_lean_path_costs_what_it_did(key_prefix):
    limits = [Limit("lean", f"10.9.{uuid.uuid4().int % 250}.1", 100, 60)]
    evaluate(limits)  # script loaded, connection open
    with count_redis() as c:
        decision = evaluate(limits)
    assert decision.allowed and decision.results[0].remaining == 98
    assert (c.round_trips, c.commands, c.billed) == (1, 1, 3)
    assert redis_backend.lean_connections() == 1


def test_noscript_falls_back_to_eval_once_on_the_lean_path(tmp_path, monkeypatch, raw_redis):
    monkeypatch.setattr(redis_backend, "_LUA_DIR", tmp_path)
    (tmp_path / "lean_echo.lua").write_text(f"-- {uuid.uuid4()}\nreturn ARGV[1]")
    redis_backend.Script._cache.pop("lean_echo", None)
    script = redis_backend.Script("lean_echo")
    assert not raw_redis.script_exists(script.sha)[0]
    _client_id()  # the handshake is not part of what is counted below
    with count_redis() as first:
        assert redis_backend.lean_call("t", lambda r: script(r, [], ["x"])) == b"x"
    with count_redis() as second:
        assert redis_backend.lean_call("t", lambda r: script(r, [], ["y"])) == b"y"
    assert (first.commands, first.round_trips, first.billed) == (2, 2, 2)  # EVALSHA -> NOSCRIPT, then EVAL
    assert (second.commands, second.round_trips, second.billed) == (1, 1, 1)


def test_a_pipeline_is_one_round_trip_and_reports_errors_in_place(key_prefix, raw_redis):
    key = f"{key_prefix}:lean:wrongtype"
    raw_redis.rpush(key, "x")
    _client_id()

    def op(r):
        pipe = r.pipeline(transaction=False)
        pipe.execute_command("GET", key)  # WRONGTYPE
        pipe.execute_command("MGET", key, f"{key}:absent")
        return pipe.execute(raise_on_error=False)

    with count_redis() as c:
        wrong, values = redis_backend.lean_call("t", op)
    assert "WRONGTYPE" in str(wrong) and values == [None, None]
    assert (c.commands, c.round_trips, c.billed) == (2, 1, 2)
    assert _client_id() == _client_id()  # still in step after the error reply
    raw_redis.delete(key)


def test_an_unreachable_redis_opens_the_gate_and_later_calls_never_connect(redis_down):
    with pytest.raises(RedisUnavailable) as info:
        redis_backend.lean_call("t", lambda r: r.get("x"))
    assert info.value.maybe_applied is False
    assert redis_gate.state == "open"
    with count_redis() as c, pytest.raises(RedisUnavailable) as turned_away:
        redis_backend.lean_call("t", lambda r: r.get("x"))
    assert turned_away.value.gate_open and c.commands == 0 and c.events["t:gate_rejected"] == 1


def test_a_lost_reply_is_maybe_applied_and_the_next_call_reconnects(settings, redis_url, raw_redis, key_prefix):
    proxy = LostReplyProxy(redis_url)
    key = f"{key_prefix}:lean:maybe"
    try:
        settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": proxy.url}}
        before = _client_id()
        proxy.arm(b"INCR", "apply")  # Redis runs it; the reply never comes back
        with pytest.raises(RedisUnavailable) as info:
            redis_backend.lean_call("t", lambda r: r.execute_command("INCR", key))
        assert info.value.maybe_applied is True
        assert raw_redis.get(key) == b"1"  # applied: a fallback must not count it again
        redis_gate.reset()
        assert _client_id() != before  # the socket whose reply was lost is never reused
    finally:
        proxy.close()
        raw_redis.delete(key)


def test_a_connection_the_server_closed_while_idle_is_replaced_without_a_failure(monkeypatch, raw_redis):
    first = _client_id()
    raw_redis.client_kill_filter(_id=first)
    monkeypatch.setattr(lean, "IDLE_CHECK_SECONDS", 0.0)  # as if it had been idle: checked before use
    second = _client_id()
    assert second != first
    assert redis_gate.state == "closed" and redis_gate.snapshot().opens == 0


def test_hotcache_timeouts_and_settings_changes_reach_the_lean_connections(hotcache_config):
    _client_id()
    hotcache_config(REDIS_SOCKET_TIMEOUT=0.07)
    client = redis_backend.lean_call("t", lambda r: r)
    assert isinstance(client, lean.LeanClient)
    assert client._conn.socket_timeout == 0.07  # rebuilt from the new settings
    assert redis_backend.lean_connections() == 1  # the old ones were closed


def test_a_thread_past_the_pools_size_uses_the_pool(monkeypatch):
    _client_id()
    state = redis_backend._lean_state
    assert state is not None and state[3] is not None
    monkeypatch.setattr(state[3]._book, "limit", 1)
    seen: list[object] = []
    t = threading.Thread(target=lambda: seen.append(redis_backend.lean_call("t", lambda r: r)))
    t.start()
    t.join()
    assert seen == [state[2]]  # the pooled client, as call() gives


def test_a_forked_child_never_uses_its_parents_socket():
    parent = _client_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the id it sees, never return into pytest
        code = 0
        try:
            os.write(write, str(_client_id()).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    child = int(os.read(read, 64) or b"0")
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child not in (0, parent)  # its own connection
    assert _client_id() == parent  # and the parent's socket still serves the parent


def test_the_embedded_fakeredis_default_runs_the_per_request_calls_too(fake_redis):
    """The embedded default (in-process fakeredis, HOTCACHE['REDIS_ALIAS'] = 'fake'): its connection class goes
    through the lean path like a socket's, with the same replies and counts."""
    limits = [Limit("lean-fake", "10.8.0.1", 2, 60)]
    assert evaluate(limits).allowed
    with count_redis() as c:
        assert evaluate(limits).allowed
        assert not evaluate(limits).allowed
    assert (c.round_trips, c.commands) == (2, 2)
    assert redis_backend.lean_connections() == 1


def test_the_socket_timeout_is_the_kernels_and_a_stalled_redis_still_times_out_and_opens_the_gate(
    settings, redis_url, hotcache_config
):
    """The lean connection waits in the kernel (SO_RCVTIMEO/SO_SNDTIMEO on a blocking socket, no poll() per
    send and receive): a Redis that stops answering still ends the call at REDIS_SOCKET_TIMEOUT, as a timeout
    (maybe_applied: the command was sent), and the gate opens after HEALTH_FAILURE_THRESHOLD of them."""
    import socket
    import struct

    proxy = LostReplyProxy(redis_url)
    try:
        settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": proxy.url}}
        hotcache_config(REDIS_SOCKET_TIMEOUT=0.2, HEALTH_FAILURE_THRESHOLD=2)
        client = redis_backend.lean_call("t", lambda r: r)
        _client_id()
        sock = client._conn._sock
        assert sock.gettimeout() is None  # blocking: no CPython timeout, so no poll() before each call
        seconds, micros = struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
        assert (seconds, micros) == (0, 200_000)
        proxy.arm(b"GET", "stall", "stall")
        for attempt in (1, 2):
            with count_redis() as c, pytest.raises(RedisUnavailable) as info:
                redis_backend.lean_call("t", lambda r: r.get("x"))
            assert info.value.maybe_applied is True and not info.value.gate_open
            assert isinstance(info.value.__cause__, RedisTimeoutError)  # a timeout, not a lost connection
            assert c.events.get("t:gate_rejected", 0) == 0  # sent, not turned away
            assert redis_gate.state == ("closed" if attempt == 1 else "open")
        assert proxy.lost == ["stall", "stall"]
    finally:
        proxy.close()


def test_a_float_argument_is_never_sent_as_the_equal_int_of_a_command_packed_before(key_prefix, raw_redis):
    """Commands are kept packed per pool; 1.0 equals 1 (and hashes alike) but packs differently, so a command with it
    is packed for itself, as the pooled path packs it."""
    key = f"{key_prefix}:lean:packed-float"
    redis_backend.lean_call("t", lambda r: r.execute_command("SET", key, 1))
    redis_backend.lean_call("t", lambda r: r.execute_command("SET", key, 1.0))
    assert raw_redis.get(key) == b"1.0"
    raw_redis.delete(key)
