"""Process-local state (deny cache, local limiter, warnings) lives as long as one HOTCACHE dict, and
manage.py ratelimit_check's service drives a rule against the real Redis."""

import uuid

import pytest

from hotcache.ratelimit import Limit, evaluate
from hotcache.ratelimit.selfcheck import CannotDrive, drive_rule
from hotcache.ratelimit.state import local_state
from hotcache.testing import reset


def _denied_once():
    lim = Limit("state", uuid.uuid4().hex, 1, 3600)
    evaluate([lim])
    assert not evaluate([lim]).allowed
    assert len(local_state().deny_cache) == 1
    return lim


def test_new_settings_start_with_an_empty_deny_cache(hotcache_config):
    lim = _denied_once()
    hotcache_config(RATELIMIT_LEGACY_HEADERS=True)  # a new HOTCACHE dict
    assert len(local_state().deny_cache) == 0
    decision = evaluate([lim])
    assert not decision.allowed and decision.results[0].source == "redis"  # Redis decides again


def test_testing_reset_forgets_the_deny_cache():
    _denied_once()
    reset()
    assert len(local_state().deny_cache) == 0


def test_the_state_is_kept_while_the_settings_do_not_change():
    _denied_once()
    assert local_state() is local_state()
    assert len(local_state().deny_cache) == 1


def test_drive_rule_reports_exactly_the_limit_admitted():
    report = drive_rule(rate="3/m")
    assert report.ok and report.admitted == 3 and report.denied == 3
    assert report.as_dict()["window_s"] == 60


def test_drive_rule_refuses_an_unknown_rule_and_an_unusable_rate():
    with pytest.raises(CannotDrive, match="no rule named"):
        drive_rule(rule="nope")
    with pytest.raises(CannotDrive, match="admits nothing"):
        drive_rule(rate="0/m")
