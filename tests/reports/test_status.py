"""manage.py hotcache_status: the overview figures in the terminal and an exit status for cron alerts."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from hotcache import metering
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from tests.reports.fixtures import empty_meter_hashes  # noqa: F401 - autouse


def workload(n=3):
    redis_backend.call("warm", lambda r: r.ping())
    for _ in range(n):
        redis_backend.call("ratelimit", lambda r: r.exists("hc-billed-probe"))
    metering.event("users", "fallback", 2)
    assert metering.flush()


def test_within_limits_exits_zero_and_prints_the_figures():
    workload()
    out = StringIO()
    call_command("hotcache_status", stdout=out)
    text = out.getvalue()
    assert "Redis billed commands today" in text and "of 10,000" in text
    assert "Redis memory" in text and "of 268,435,456" in text
    assert "fallback events today 2" in text
    assert any(line.startswith("ratelimit") and " 3 " in line for line in text.splitlines())


def test_json_has_the_same_figures():
    workload()
    out = StringIO()
    call_command("hotcache_status", "--json", stdout=out)
    report = json.loads(out.getvalue())
    feats = {f["feature"]: f for f in report["features"]}
    assert feats["ratelimit"]["commands_today"] == 3
    assert report["commands_today"]["limit"] == 10_000
    assert report["fallbacks_today"] == {"users": 2}
    assert report["exceeded"] == []
    assert len(report["days"]) == 30


def test_budget_exceeded_exits_non_zero_naming_it(hotcache_config):
    hotcache_config(REDIS_DAILY_COMMAND_BUDGET=2)
    workload()
    out = StringIO()
    with pytest.raises(CommandError, match="REDIS_DAILY_COMMAND_BUDGET") as exc:
        call_command("hotcache_status", stdout=out)
    assert exc.value.returncode == 1
    assert "EXCEEDED" in out.getvalue()


def test_memory_limit_exceeded_exits_non_zero(hotcache_config):
    hotcache_config(REDIS_MEMORY_LIMIT=1000)
    with pytest.raises(CommandError, match=r"Redis memory.*REDIS_MEMORY_LIMIT"):
        call_command("hotcache_status", "--json", stdout=StringIO())


def test_mongo_server_connections_over_the_limit_exit_non_zero(monkeypatch):
    # No MongoDB server runs here; serverStatus's answer is supplied as a real server would give it.
    monkeypatch.setattr(mongo, "server_status_connections", lambda: {"current": 501, "available": 0})
    with pytest.raises(CommandError, match="MONGO_SERVER_CONNECTION_LIMIT"):
        call_command("hotcache_status", stdout=StringIO())


def test_server_connections_are_the_real_servers_server_status(real_mongo):
    """On a real server hotcache_status reads serverStatus.connections: the figure is the whole server's, so
    connections of other clients count (the pools hotcache's processes publish could not see them)."""
    before = json.loads(_status_json())["mongo"]
    assert before["server_source"] == "serverStatus"
    assert before["server_status"]["current"] == before["server_limit"]["value"] >= 1
    others = [real_mongo.client(directConnection=True) for _ in range(8)]
    for other in others:
        other.admin.command("ping")  # each holds a pooled connection from here on
    after = json.loads(_status_json())["mongo"]
    assert after["server_source"] == "serverStatus"
    assert after["server_limit"]["value"] >= before["server_limit"]["value"] + 8
    assert after["server_status"]["totalCreated"] >= before["server_status"]["totalCreated"] + 8
    text = StringIO()
    call_command("hotcache_status", stdout=text)
    assert "per serverStatus" in text.getvalue()


def _status_json():
    out = StringIO()
    call_command("hotcache_status", "--json", stdout=out)
    return out.getvalue()


def test_redis_down_reports_local_figures_and_exits_zero(redis_down):
    out = StringIO()
    call_command("hotcache_status", stdout=out)
    assert "Redis is unavailable" in out.getvalue() and "Health gate: open" in out.getvalue()


def test_exit_status_from_a_real_process():
    import os
    import subprocess
    import sys

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    ok = subprocess.run(
        [sys.executable, "manage.py", "hotcache_status", "--days", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "Redis billed commands today" in ok.stdout
