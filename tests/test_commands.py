"""The foundation's commands: hotcache_check and hotcache_demo's argument check (the demo itself: tests/demo/)."""

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


def test_demo_rejects_bad_request_count():
    with pytest.raises(CommandError, match="--requests"):
        call_command("hotcache_demo", "--requests", "0")
