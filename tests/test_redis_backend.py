"""hotcache's Redis client: errors mapped, commands metered exactly, Lua scripts loaded once."""

import uuid

import pytest

from hotcache import metering
from hotcache.backends import redis as redis_backend
from hotcache.exceptions import RedisUnavailable
from hotcache.testing import count_redis
from tests.support.lost_reply import LostReplyProxy


def test_client_uses_the_alias_server_with_hotcache_timeouts(redis_url, hotcache_config):
    hotcache_config(REDIS_SOCKET_TIMEOUT=0.07)
    client = redis_backend.get_client()
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.07
    assert str(kwargs["port"]) in redis_url
    assert redis_backend.call("t", lambda r: r.ping()) is True


def test_commands_and_round_trips_are_counted_per_feature():
    redis_backend.call("warm", lambda r: r.ping())  # connection handshake happens here
    with count_redis() as c:
        redis_backend.call("alpha", lambda r: r.ping())

        def pipe(r):
            p = r.pipeline(transaction=False)
            p.ping()
            p.ping()
            p.ping()
            return p.execute()

        redis_backend.call("beta", pipe)
    assert c.by_feature == {"alpha": 1, "beta": 3}
    assert c.commands == 4 and c.round_trips == 2


def test_script_loads_once_and_retries_on_noscript(tmp_path, monkeypatch, raw_redis):
    body = f"-- {uuid.uuid4()}\nreturn ARGV[1]"
    monkeypatch.setattr(redis_backend, "_LUA_DIR", tmp_path)
    (tmp_path / "echo_test.lua").write_text(body)
    redis_backend.Script._cache.pop("echo_test", None)
    script = redis_backend.Script("echo_test")
    assert not raw_redis.script_exists(script.sha)[0]
    redis_backend.call("warm", lambda r: r.ping())
    with count_redis() as first:
        assert redis_backend.call("t", lambda r: script(r, [], ["x"])) == b"x"
    with count_redis() as second:
        assert redis_backend.call("t", lambda r: script(r, [], ["y"])) == b"y"
    assert (first.commands, first.round_trips, first.billed) == (2, 2, 2)  # EVALSHA -> NOSCRIPT, then EVAL
    assert (second.commands, second.round_trips, second.billed) == (1, 1, 1)


def test_a_script_reports_the_commands_it_ran_and_callers_see_its_own_reply(tmp_path, monkeypatch, key_prefix):
    body = f"""-- {uuid.uuid4()}
local n = 0
for i = 1, tonumber(ARGV[1]) do
  redis.call('INCR', KEYS[1])
  n = n + 1
end
if ARGV[2] == 'nil' then return nil end
if ARGV[2] == 'false' then return false end
local call = redis.call  -- aliased (as sliding_window.lua does): still counted
call('EXPIRE', KEYS[1], 60)
redis.pcall('HGET', KEYS[1], 'x')  -- a WRONGTYPE error the server executed: counted
return {{n, redis.call('GET', KEYS[1])}}"""
    monkeypatch.setattr(redis_backend, "_LUA_DIR", tmp_path)
    (tmp_path / "count_test.lua").write_text(body)
    redis_backend.Script._cache.pop("count_test", None)
    script = redis_backend.Script("count_test")
    key = f"{key_prefix}:t:counted"
    redis_backend.call("warm", lambda r: script(r, [key], [0, "nil"]))
    with count_redis() as c:
        assert redis_backend.call("t", lambda r: script(r, [key], [3, "table"])) == [3, b"3"]
    assert (c.commands, c.round_trips, c.billed) == (1, 1, 1 + 3 + 3)
    with count_redis() as c:
        assert redis_backend.call("t", lambda r: script(r, [key], [2, "nil"])) is None
        assert redis_backend.call("t", lambda r: script(r, [key], [0, "false"])) is None
    assert c.billed == (1 + 2) + 1 and c.billed_by_feature == {"t": 4}

    def piped(r):
        pipe = r.pipeline(transaction=False)
        script.queue(pipe, [key], [1, "nil"])
        script.queue(pipe, [key], [1, "table"], load=True)
        return [script.reply(raw) for raw in pipe.execute()]

    with count_redis() as c:
        assert redis_backend.call("t", piped) == [None, [1, b"7"]]
    assert (c.commands, c.round_trips, c.billed) == (2, 1, (1 + 1) + (1 + 1 + 3))


def test_billed_excludes_only_the_free_commands():
    free = ("PING", b"AUTH", "hello", "INFO", "QUIT", "COMMAND", "CLIENT SETNAME")
    assert not any(metering.billable(n) for n in free)
    assert all(metering.billable(n) for n in ("GET", b"EVALSHA", "MULTI", "EXEC", "SELECT", "SCRIPT LOAD", "TIME"))
    stats = {
        "cmdstat_get": {"calls": 5},
        "cmdstat_client|setinfo": {"calls": 2},
        "cmdstat_info": {"calls": 9},
        "cmdstat_exec": {"calls": 1},
        "cmdstat_evalsha": {"calls": 3, "failed_calls": 1, "rejected_calls": 2},
    }
    assert metering.server_billed(stats) == 11


def test_wrong_type_errors_fall_back_without_opening_the_gate(key_prefix):
    key = f"{key_prefix}:t:list"
    redis_backend.call("t", lambda r: r.rpush(key, "a"))
    with pytest.raises(RedisUnavailable):
        redis_backend.call("t", lambda r: r.incr(key))
    assert redis_backend.call("t", lambda r: r.delete(key)) == 1


def test_meter_flush_writes_one_command_and_survives_in_redis(raw_redis, key_prefix):
    for _ in range(10):
        redis_backend.call("alpha", lambda r: r.ping())
    metering.event("alpha", "hit", 3)
    metering.flush()  # the script is loaded (NOSCRIPT -> EVAL on a server that never saw it)
    assert not metering.meter.pending()  # a flush writes its own cost: nothing is left for the next one
    metering.event("alpha", "hit", 1)
    with count_redis() as c:
        assert metering.flush() is True
    assert c.commands == 1 and c.billed == 3  # EVALSHA, HGET and HSET of the day's counts
    day = metering.usage(days=1)[0]
    assert day.by_prefix("cmd")["alpha"] >= 10
    assert day.fields["ev:alpha:hit"] == 4
    assert day.fields["billed:meter"] >= 3 + 3  # both flushes, each written by itself
    assert raw_redis.ttl(f"{key_prefix}:{{meter:usage}}:{day.day}") > 0


def test_meter_counts_written_before_the_json_field_are_still_read(raw_redis, key_prefix):
    """Upgrading: a daily hash with the integer fields older versions wrote keeps them, and the reader adds them
    to what the new flush writes as JSON."""
    before = metering.usage(days=1)[0]
    key = f"{key_prefix}:{{meter:usage}}:{before.day}"
    raw_redis.hincrby(key, "ev:alpha:old", 2)
    metering.event("alpha", "old", 3)
    assert metering.flush() is True
    assert metering.usage(days=1)[0].fields["ev:alpha:old"] == before.fields["ev:alpha:old"] + 5


def test_a_meter_record_hotcache_did_not_write_is_reset_not_a_stuck_meter(raw_redis, key_prefix):
    today = metering.usage(days=1)[0].day
    key = f"{key_prefix}:{{meter:usage}}:{today}"
    raw_redis.delete(key)
    raw_redis.hset(key, "*", "not json")
    metering.event("alpha", "hit", 2)
    assert metering.flush() is True
    assert metering.usage(days=1)[0].fields["ev:alpha:hit"] == 2
    raw_redis.delete(key)
    raw_redis.set(key, "not a hash")
    metering.event("alpha", "hit", 3)
    assert metering.flush() is True
    assert metering.usage(days=1)[0].fields["ev:alpha:hit"] == 3
    assert raw_redis.ttl(key) > 0


def test_metering_costs_under_one_percent(hotcache_config):
    hotcache_config(METER_FLUSH_EVERY=500)
    redis_backend.call("warm", lambda r: r.ping())
    with count_redis() as c:
        for _ in range(3000):
            redis_backend.call("alpha", lambda r: r.ping())
    meter_commands = c.by_feature.get("meter", 0)
    assert meter_commands >= 1  # it did flush
    assert meter_commands / c.commands <= 0.01


def test_flush_keeps_counts_when_redis_is_down(redis_down):
    metering.event("alpha", "hit", 2)
    assert metering.flush() is False
    assert metering.meter.pending()  # nothing lost; written on the next successful flush


def test_a_lost_reply_is_reported_as_maybe_applied(settings, hotcache_config, redis_url, raw_redis, key_prefix):
    proxy = LostReplyProxy(redis_url)
    proxy.arm(b"INCR", "apply")  # Redis runs it; the reply never comes back
    key = f"{key_prefix}:t:maybe"
    try:
        settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": proxy.url}}
        with pytest.raises(RedisUnavailable) as info:
            redis_backend.call("t", lambda r: r.incr(key))
        assert info.value.maybe_applied is True
        assert raw_redis.get(key) == b"1"  # it was applied: a fallback must not count it again
    finally:
        proxy.close()
        raw_redis.delete(key)


def test_a_refused_connection_is_not_maybe_applied(redis_down):
    with pytest.raises(RedisUnavailable) as info:
        redis_backend.call("t", lambda r: r.incr("x"))
    assert info.value.maybe_applied is False


def test_a_meter_field_that_is_not_valid_utf8_never_fails_the_flush():
    from hotcache import metering

    metering.event("test", "odd-\ud800-name")
    metering.event("test", "plain")
    assert metering.flush() is True
    fields = metering.usage(days=1)[0].fields
    assert fields["ev:test:plain"] == 1
    assert fields["ev:test:odd-\\ud800-name"] == 1
