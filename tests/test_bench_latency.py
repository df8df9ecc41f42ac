"""``hotcache_bench --latency-ms``: the relays carry every byte unchanged, the arms really go through them,
and the database's connection settings are put back afterwards. (How much delay a relay adds is a
benchmark figure, never asserted here.)"""

import json

import pytest
import redis as redis_py
from django.core.management import CommandError, call_command
from django.db import connections

from config.demo.bench.latency import delayed


def test_a_redis_behind_the_relay_answers_every_command_unchanged(redis_url):
    with delayed(redis_url, 0.2, say=lambda _: None) as mode:
        assert mode.redis_url != redis_url
        client = redis_py.Redis.from_url(mode.redis_url)
        try:
            assert client.ping() is True
            value = bytes(range(256)) * 600  # larger than one chunk, every byte value
            client.set("hc-latency-probe", value, ex=30)
            assert client.get("hc-latency-probe") == value
            pipe = client.pipeline(transaction=False)
            for i in range(50):
                pipe.echo(f"m{i}")
            assert pipe.execute() == [f"m{i}".encode() for i in range(50)]
        finally:
            client.delete("hc-latency-probe")
            client.close()
    assert mode.relays["database"].startswith("sqlite")  # in-process: nothing to delay, and it says so


def test_the_bench_reports_latency_mode_and_its_arms_reach_redis_through_the_relay(redis_url, capsys):
    db_settings = dict(connections["default"].settings_dict)
    call_command(
        "hotcache_bench",
        "foundation",
        "--redis-url",
        redis_url,
        "--rounds",
        "1",
        "--ops",
        "3",
        "--latency-ms",
        "0.2",
        "--json",
    )
    report = json.loads(capsys.readouterr().out)
    mode = report.pop("latency_mode")
    assert mode["delay_ms_each_way"] == 0.2
    assert " via 127.0.0.1:" in mode["redis"]
    arms = [arm for group in report.values() for arm in group]
    assert arms and any(arm["redis_round_trips_per_op"] > 0 for arm in arms)
    assert dict(connections["default"].settings_dict) == db_settings


@pytest.mark.parametrize("url", ["unix:///tmp/redis.sock", "not a url"])
def test_latency_mode_needs_a_redis_url_with_a_host(url):
    with pytest.raises(CommandError, match="redis:// or rediss://"):
        call_command("hotcache_bench", "foundation", "--redis-url", url, "--latency-ms", "0.5")


def test_latency_mode_refuses_a_delay_that_is_not_positive(redis_url):
    with pytest.raises(CommandError, match="greater than 0"):
        call_command("hotcache_bench", "foundation", "--redis-url", redis_url, "--latency-ms", "-1")
