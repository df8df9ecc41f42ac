"""System checks E010-E019 and manage.py ratelimit_check."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from hotcache.checks import check_ratelimit


def ids(hotcache_config, **values):
    hotcache_config(**values)
    return [(e.id, e.msg) for e in check_ratelimit()]


def test_valid_rules_pass(hotcache_config):
    assert ids(hotcache_config, RATELIMIT_RULES=[
        {"name": "a", "rate": "5/10s", "key": "ip", "path": "/x/", "methods": ["POST"], "headers": True},
        {"name": "b", "rate": "100/m", "key": "header:x-team", "path": r"^/api/\d+/", "policy": "open"},
        {"name": "c", "rate": "1000/5m", "key": "hotcache.clientip.client_bucket", "url_name": "home"},
    ], TRUSTED_PROXIES=["10.0.0.0/8", "2001:db8::/32"]) == []


@pytest.mark.parametrize(
    ("rule", "check_id"),
    [
        ({"name": "r", "rate": "lots", "key": "ip"}, "hotcache.E010"),
        ({"name": "r", "key": "ip"}, "hotcache.E010"),
        ({"name": "r", "rate": "1/m", "key": "fingerprint"}, "hotcache.E011"),
        ({"name": "r", "rate": "1/m", "key": "cookie:x"}, "hotcache.E011"),
        ({"name": "r", "rate": "1/m", "key": "no.such.module.fn"}, "hotcache.E011"),
        ({"rate": "1/m", "key": "ip"}, "hotcache.E012"),
        ({"name": "has space", "rate": "1/m", "key": "ip"}, "hotcache.E012"),
        ({"name": "r", "rate": "1/m", "key": "ip", "policy": "maybe"}, "hotcache.E014"),
        ({"name": "r", "rate": "1/m", "key": "ip", "path": "^/(unclosed"}, "hotcache.E015"),
        ({"name": "r", "rate": "1/m", "key": "ip", "methods": ["FETCH"]}, "hotcache.E017"),
        ({"name": "r", "rate": "1/m", "key": "ip", "colour": "red"}, "hotcache.E017"),
        ("not a dict", "hotcache.E017"),
    ],
)
def test_bad_rule_is_an_error_naming_rule_and_setting(hotcache_config, rule, check_id):
    found = ids(hotcache_config, RATELIMIT_RULES=[rule])
    assert [i for i, _ in found] == [check_id]
    assert "HOTCACHE['RATELIMIT_RULES'][0]" in found[0][1]
    if isinstance(rule, dict) and rule.get("name") == "r":
        assert "'r'" in found[0][1]


def test_duplicate_names(hotcache_config):
    found = ids(hotcache_config, RATELIMIT_RULES=[{"name": "r", "rate": "1/m", "key": "ip"}] * 2)
    assert [i for i, _ in found] == ["hotcache.E013"]


def test_bad_settings(hotcache_config):
    found = ids(hotcache_config, RATELIMIT_DEFAULT_POLICY="sometimes", TRUSTED_PROXIES=["10.0.0.0/33", "x"],
                RATELIMIT_STATUS_CODE=200, IPV6_PREFIX=129, TRUSTED_PROXY_HEADER="x-real-ip",
                RATELIMIT_DENY_CACHE_SIZE="big")
    got = sorted(i for i, _ in found)
    assert got == sorted(["hotcache.E014", "hotcache.E016", "hotcache.E016", "hotcache.E016", "hotcache.E018",
                          "hotcache.E019", "hotcache.E004"])
    assert all("HOTCACHE[" in m for _, m in found)


def test_command_drives_a_rule_past_its_limit(hotcache_config):
    hotcache_config(RATELIMIT_RULES=[{"name": "login-burst", "rate": "5/10s", "key": "ip"}])
    out = StringIO()
    call_command("ratelimit_check", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["ok"] and report["admitted"] == 5 and report["denied"] == 3
    assert all(r["retry_after"] >= 1 for r in report["requests"] if not r["allowed"])


def test_command_fails_when_redis_is_unreachable(redis_down):
    with pytest.raises(CommandError, match="unreachable"):
        call_command("ratelimit_check", "--rate", "3/m", stdout=StringIO())


@pytest.mark.parametrize(
    ("rules", "args"),
    [([{"name": "bad\x00name", "rate": "5/10s", "key": "ip"}], []),
     ([{"name": "r", "rate": ["5/10s"], "key": "ip"}], []),
     ([], ["--rate", "1" * 5000 + "/m"]),
     ([], ["--rate", "\ud800"]),
     ([], ["--rule", "\x00"])],
)
def test_command_refuses_hostile_rules_and_arguments_with_a_command_error(hotcache_config, rules, args):
    hotcache_config(RATELIMIT_RULES=rules)
    with pytest.raises(CommandError):
        call_command("ratelimit_check", *args, stdout=StringIO())
