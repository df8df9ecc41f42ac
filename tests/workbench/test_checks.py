"""System checks for the workbench settings (hotcache.E051-E056, E004)."""

import datetime as dt

import pytest

from hotcache.checks import check_workbench


def ids():
    return sorted(m.id for m in check_workbench())


def test_defaults_pass():
    assert ids() == []


def test_idle_threshold_that_lets_redis_expire_abandoned_sessions_first(hotcache_config):
    hotcache_config(WORKBENCH_PERSIST_IDLE_AFTER=3500)
    [message] = check_workbench()
    assert message.id == "hotcache.E051" and "WORKBENCH_PERSIST_IDLE_AFTER" in message.msg and message.hint


def test_state_limit_over_a_mongodb_document(hotcache_config):
    hotcache_config(WORKBENCH_MAX_STATE_BYTES=20_000_000)
    assert ids() == ["hotcache.E052"]


def test_ended_ttl_shorter_than_a_persister_cycle(hotcache_config):
    hotcache_config(WORKBENCH_ENDED_TTL=400)
    [message] = check_workbench()
    assert message.id == "hotcache.E053" and "WORKBENCH_ENDED_TTL" in message.msg


@pytest.mark.parametrize("schedule", [900, dt.timedelta(minutes=15)])
def test_beat_schedule_slower_than_the_persist_interval(settings, schedule):
    settings.CELERY_BEAT_SCHEDULE = {
        "wb": {"task": "hotcache.tasks.persist_workbench_sessions", "schedule": schedule}
    }
    [message] = check_workbench()
    assert message.id == "hotcache.E054" and "WORKBENCH_PERSIST_INTERVAL" in message.msg


def test_the_shipped_beat_entry_matches_the_interval(settings):
    entries = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"].endswith("persist_workbench_sessions")]
    assert entries and check_workbench() == []


@pytest.mark.parametrize("name", ["WORKBENCH_IDLE_TIMEOUT", "WORKBENCH_PERSIST_BATCH", "WORKBENCH_CLAIM_TIMEOUT"])
def test_non_numbers_name_the_setting(hotcache_config, name):
    hotcache_config(**{name: "soon"})
    [message] = check_workbench()
    assert message.id == "hotcache.E004" and name in message.msg


def test_disabled_feature_is_not_checked(hotcache_config):
    hotcache_config(FEATURES=["ratelimit"], WORKBENCH_PERSIST_IDLE_AFTER=99999)
    assert ids() == []


@pytest.mark.parametrize("depth", [0, -1, "64", 64.0, True, None, 513])
def test_max_depth_must_be_a_whole_number_from_1_to_512(hotcache_config, depth):
    hotcache_config(WORKBENCH_MAX_DEPTH=depth)
    [message] = check_workbench()
    assert message.id == "hotcache.E056" and "WORKBENCH_MAX_DEPTH" in message.msg and message.hint


def test_max_depth_error_is_reported_with_the_number_errors(hotcache_config):
    hotcache_config(WORKBENCH_MAX_DEPTH="deep", WORKBENCH_IDLE_TIMEOUT="soon")
    assert ids() == ["hotcache.E004", "hotcache.E056"]
