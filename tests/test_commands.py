"""The foundation's commands: hotcache_check and hotcache_demo."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError


def test_check_passes_against_real_redis():
    out = StringIO()
    call_command("hotcache_check", stdout=out)
    assert "Redis    OK" in out.getvalue() and "lua yes" in out.getvalue()
    assert "MongoDB  OK" in out.getvalue()


def test_check_fails_with_the_setting_that_points_at_a_dead_redis(redis_down):
    out = StringIO()
    with pytest.raises(CommandError, match="redis"):
        call_command("hotcache_check", stdout=out)
    assert "CACHES['default']['LOCATION']" in out.getvalue()
    assert f"127.0.0.1:{redis_down}" in out.getvalue()


def test_check_names_mongo_url_when_mongo_is_unreachable(hotcache_config):
    hotcache_config(MONGO_URL="mongodb://127.0.0.1:1/x", MONGO_SERVER_SELECTION_TIMEOUT_MS=200)
    out = StringIO()
    with pytest.raises(CommandError, match="mongodb"):
        call_command("hotcache_check", stdout=out)
    assert "HOTCACHE['MONGO_URL']" in out.getvalue()


@pytest.mark.django_db
def test_demo_runs_through_wsgi_and_reports_json():
    out = StringIO()
    call_command("hotcache_demo", "--requests", "60", "--json", stdout=out, stderr=StringIO())
    report = json.loads(out.getvalue())
    assert report["requests"] == 60
    assert sum(report["statuses"].values()) == 60
    assert report["daily_budget"] == 10_000
    assert "fallbacks" in report["health"]
    # Scripts bill every command they run: the bill is well above the commands sent.
    sent_per_1000 = 1000 * sum(report["redis_on_request_path"].values()) / 60
    assert report["billed_commands_per_1000_requests"] > sent_per_1000


@pytest.mark.django_db
def test_demo_completes_with_redis_down(redis_down):
    out = StringIO()
    call_command("hotcache_demo", "--requests", "40", "--json", stdout=out, stderr=StringIO())
    report = json.loads(out.getvalue())
    assert report["requests"] == 40
    assert not any(int(code) >= 500 for code in report["statuses"])


def test_demo_rejects_bad_request_count():
    with pytest.raises(CommandError, match="--requests"):
        call_command("hotcache_demo", "--requests", "0")
