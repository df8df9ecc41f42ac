"""What a failed Redis call tells the health gate: by exception class and code, whatever redis-py did with the
message (it strips the code, and a pipeline prefixes the command), and the provider's quota errors by their text."""

from __future__ import annotations

import logging

import pytest
import redis.exceptions as rx
from redis._parsers.base import BaseParser

from hotcache.backends import errors
from hotcache.backends.health import CLOSED, CONDITION_WINDOW, OPEN, HealthGate

# The reply lines as the servers send them (without "-" and CRLF), each through redis-py's own parser.
SERVER_STATE_REPLIES = {
    "OOM": "OOM command not allowed when used memory > 'maxmemory'.",
    "READONLY": "READONLY You can't write against a read only replica.",
    "LOADING": "LOADING Redis is loading the dataset in memory",
    "BUSY": "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "MASTERDOWN": "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "CLUSTERDOWN": "CLUSTERDOWN The cluster is down",
    "TRYAGAIN": "TRYAGAIN Multiple keys request during rehashing of slot",
    "NOREPLICAS": "NOREPLICAS Not enough good replicas to write.",
    "MISCONF": "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
}
UPSTASH_DAILY = (
    "ERR max daily request limit exceeded. Limit: 10000, Usage: 10000. "
    "See https://upstash.com/docs/redis/troubleshooting/max_daily_request_limit for details"
)


def parsed(reply: str) -> Exception:
    return BaseParser.parse_error(reply)


@pytest.mark.parametrize("code", sorted(SERVER_STATE_REPLIES))
def test_server_states_are_recognised_whatever_the_message(code):
    exc = parsed(SERVER_STATE_REPLIES[code])
    verdict = errors.classify(exc)
    assert (verdict.kind, verdict.code) == (errors.SERVER_STATE, code)
    assert code in verdict.condition
    assert verdict.server_answered


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (rx.OutOfMemoryError, "OOM"),
        (rx.ReadOnlyError, "READONLY"),
        (rx.BusyLoadingError, "LOADING"),
        (rx.MasterDownError, "MASTERDOWN"),
        (rx.ClusterDownError, "CLUSTERDOWN"),
        (rx.TryAgainError, "TRYAGAIN"),
    ],
)
def test_the_class_alone_is_enough(cls, code):
    """An older redis-py sets no status_code, and the message no longer starts with the code."""
    exc = cls("command not allowed")
    exc.status_code = None
    assert errors.classify(exc).code == code


def test_a_pipelines_annotated_error_keeps_its_code():
    exc = parsed(SERVER_STATE_REPLIES["BUSY"])
    exc.args = (f"Command # 2 (EVALSHA abc 1 k) of pipeline caused error: {exc.args[0]}",)
    exc.status_code = None
    assert errors.classify(exc).code == "BUSY"


@pytest.mark.parametrize(
    ("reply", "condition", "daily"),
    [
        (UPSTASH_DAILY, "the daily request quota", True),
        ("ERR max requests limit exceeded.", "the monthly request quota", False),
        ("ERR DB capacity quota exceeded", "the database size quota (writes refused)", False),
    ],
)
def test_provider_quotas(reply, condition, daily):
    verdict = errors.classify(parsed(reply))
    assert (verdict.kind, verdict.condition, verdict.daily) == (errors.QUOTA, condition, daily)


@pytest.mark.parametrize(
    "reply", ["ERR max request size exceeded", "ERR max single record size exceeded", "ERR max key size exceeded"]
)
def test_a_request_too_large_is_this_calls_error(reply):
    assert errors.classify(parsed(reply)).kind == errors.CALL


@pytest.mark.parametrize(
    "reply",
    [
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "ERR unknown command 'FOO'",
        "NOSCRIPT No matching script. Please use EVAL.",
        "CROSSSLOT Keys in request don't hash to the same slot",
    ],
)
def test_per_call_errors(reply):
    assert errors.classify(parsed(reply)).kind == errors.CALL


def test_connection_failures_and_timeouts():
    assert errors.classify(rx.ConnectionError("Error 111 connecting")).kind == errors.CONNECTION
    assert errors.classify(parsed("ERR max number of clients reached")).kind == errors.CONNECTION
    assert errors.classify(rx.TimeoutError("Timeout reading from socket")).kind == errors.TIMEOUT
    verdict = errors.classify(OSError("broken pipe"))
    assert verdict.kind == errors.TIMEOUT and not verdict.server_answered


def test_server_state_errors_open_the_gate_despite_successes_between_them(clock, hotcache_config):
    """A Redis out of memory still serves reads: write failures interleaved with read successes open the gate."""
    hotcache_config(HEALTH_FAILURE_THRESHOLD=3)
    gate = HealthGate("unit")
    oom = parsed(SERVER_STATE_REPLIES["OOM"])
    for _ in range(2):
        gate.server_state(oom, "memory full")
        gate.success()
    assert gate.state == CLOSED
    gate.server_state(oom, "memory full")
    assert gate.state == OPEN
    assert gate.snapshot().condition == "memory full"


def test_server_state_errors_far_apart_do_not_add_up(clock, hotcache_config):
    hotcache_config(HEALTH_FAILURE_THRESHOLD=3)
    gate = HealthGate("unit")
    for _ in range(5):
        gate.server_state(parsed(SERVER_STATE_REPLIES["TRYAGAIN"]), "slot")
        gate.success()
        clock.advance(CONDITION_WINDOW + 1)
    assert gate.state == CLOSED


def test_after_recovery_the_same_condition_reopens_at_once_and_is_logged_once(clock, hotcache_config, caplog):
    hotcache_config(HEALTH_FAILURE_THRESHOLD=3, HEALTH_COOLDOWN=5.0)
    gate = HealthGate("unit")
    oom = parsed(SERVER_STATE_REPLIES["OOM"])
    with caplog.at_level(logging.WARNING, logger="hotcache.health"):
        for _ in range(3):
            gate.server_state(oom, "memory full")
        clock.advance(5.0)
        assert gate.allow()
        gate.success()  # the probe was a read: it succeeds while writes are still refused
        assert gate.state == CLOSED
        gate.server_state(oom, "memory full")
        assert gate.state == OPEN
    assert gate.snapshot().opens == 2
    logged = [r.getMessage() for r in caplog.records]
    assert len([m for m in logged if "memory full" in m]) == 1, logged


def test_a_daily_quota_keeps_the_gate_open_until_the_next_utc_day(clock, hotcache_config, caplog):
    hotcache_config(HEALTH_COOLDOWN=5.0)
    clock.advance(86_400 - clock.time() % 86_400 + 22 * 3600)  # 22:00 UTC
    gate = HealthGate("unit")
    with caplog.at_level(logging.ERROR, logger="hotcache.health"):
        gate.quota(parsed(UPSTASH_DAILY), "the daily request quota", daily=True)
        assert gate.state == OPEN
        clock.advance(2 * 3600 - 1)
        assert not gate.allow()
        clock.advance(1)  # midnight UTC
        assert gate.allow()
        gate.quota(parsed(UPSTASH_DAILY), "the daily request quota", daily=True)  # still out: the probe failed
    assert gate.snapshot().retry_at == pytest.approx(clock.time() + 86_400)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "daily request quota ran out" in messages[0] and "00:00:00 UTC" in messages[0]


def test_other_quotas_use_the_quota_cooldown(clock, hotcache_config):
    hotcache_config(HEALTH_COOLDOWN=5.0, HEALTH_QUOTA_COOLDOWN=120.0)
    gate = HealthGate("unit")
    gate.quota(parsed("ERR max requests limit exceeded."), "the monthly request quota", daily=False)
    clock.advance(119)
    assert not gate.allow()
    clock.advance(1)
    assert gate.allow()
    gate.success()
    assert gate.state == CLOSED and gate.snapshot().condition == ""
