import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from hotcache.checks import check_foundation


def ids(settings_obj=None):
    return sorted(m.id for m in check_foundation())


def test_valid_test_settings_pass():
    assert ids() == []


def test_alias_missing_from_caches(hotcache_config):
    hotcache_config(REDIS_ALIAS="nope")
    assert "hotcache.E002" in ids()


def test_alias_that_is_not_django_redis(settings, hotcache_config):
    settings.CACHES = {**settings.CACHES, "loc": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    hotcache_config(REDIS_ALIAS="loc")
    messages = check_foundation()
    e003 = [m for m in messages if m.id == "hotcache.E003"]
    assert e003 and "REDIS_ALIAS" in e003[0].msg


@pytest.mark.parametrize(
    ("name", "value"),
    [("REDIS_SOCKET_TIMEOUT", "fast"), ("HEALTH_COOLDOWN", -1), ("REDIS_DAILY_COMMAND_BUDGET", 1.5),
     ("REDIS_MONTHLY_COMMAND_BUDGET", 0), ("MONGO_MAX_POOL_SIZE", 0), ("HEALTH_FAILURE_THRESHOLD", True)],
)
def test_unparsable_values_name_the_setting(hotcache_config, name, value):
    hotcache_config(**{name: value})
    messages = [m for m in check_foundation() if m.id == "hotcache.E004"]
    assert len(messages) == 1 and name in messages[0].msg


def test_bad_key_prefix(hotcache_config):
    hotcache_config(KEY_PREFIX="a:b")
    assert "hotcache.E005" in ids()


def test_unknown_feature(hotcache_config):
    hotcache_config(FEATURES=["ratelimit", "teleport"])
    assert "hotcache.E006" in ids()


def test_mongo_url_missing_where_a_feature_needs_it(hotcache_config):
    hotcache_config(MONGO_URL=None)
    messages = [m for m in check_foundation() if m.id == "hotcache.E007"]
    assert messages and "MONGO_URL" in messages[0].msg


def test_mongo_url_not_needed_when_only_redis_features_are_on(hotcache_config):
    hotcache_config(MONGO_URL=None, FEATURES=["ratelimit", "users"])
    assert ids() == []


def test_mongo_url_with_wrong_scheme(hotcache_config):
    hotcache_config(MONGO_URL="postgres://db/x")
    assert "hotcache.E008" in ids()


@pytest.mark.parametrize("mode", ["streaming", "", None, 1])
def test_unknown_server_monitoring_mode_is_e009_naming_the_setting(hotcache_config, mode):
    hotcache_config(MONGO_SERVER_MONITORING_MODE=mode)
    e009 = [m for m in check_foundation() if m.id == "hotcache.E009"]
    assert e009 and "MONGO_SERVER_MONITORING_MODE" in e009[0].msg and "'poll'" in e009[0].hint


_HEALTHY_POOL_CHECKS = [("MONGO_HEALTHY_POOL_SIZE", "hotcache.E150"), ("MONGO_HEALTHY_MAX_OVERFLOW", "hotcache.E151")]


@pytest.mark.parametrize(("name", "check_id"), _HEALTHY_POOL_CHECKS)
@pytest.mark.parametrize("size", [-1, 11, 1.5, True, "1", None])
def test_healthy_pool_size_or_overflow_outside_0_to_the_max_pool_size_is_e150_e151(hotcache_config, name, check_id,
                                                                                    size):
    hotcache_config(**{name: size})
    errors = [m for m in check_foundation() if m.id == check_id]
    assert errors and name in errors[0].msg and "(10)" in errors[0].msg


@pytest.mark.parametrize(("name", "check_id"), _HEALTHY_POOL_CHECKS)
@pytest.mark.parametrize("size", [0, 1, 10])
def test_healthy_pool_size_or_overflow_from_0_to_the_max_pool_size_is_accepted(hotcache_config, name, check_id, size):
    hotcache_config(**{name: size})
    assert check_id not in ids()


@pytest.mark.parametrize("name", ["MONGO_HEALTHY_WAIT_MS", "MONGO_MAX_IDLE_TIME_MS"])
def test_healthy_wait_and_idle_time_are_whole_milliseconds_zero_allowed(hotcache_config, name):
    hotcache_config(**{name: 0})
    assert "hotcache.E004" not in ids()
    hotcache_config(**{name: -5})
    assert "hotcache.E004" in ids()


def test_typo_in_setting_name_is_a_warning(hotcache_config):
    hotcache_config(REDIS_ALAIS="x")
    assert "hotcache.W001" in ids()


def test_not_a_dict(settings):
    settings.HOTCACHE = ["x"]
    assert ids() == ["hotcache.E001"]


def test_manage_py_check_reports_errors(hotcache_config):
    hotcache_config(REDIS_ALIAS="nope")
    with pytest.raises(SystemCheckError, match=r"hotcache\.E002"):
        call_command("check")


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("MONGO_URI", "MONGO_URL"), ("REDIS_ALAIS", "REDIS_ALIAS"), ("ratelimit_rules", "RATELIMIT_RULES"),
     ("WORKBENCH_IDLE_TIMOUT", "WORKBENCH_IDLE_TIMEOUT")],
)
def test_an_unknown_key_suggests_the_closest_setting(settings, typo, meant):
    settings.HOTCACHE = {**settings.HOTCACHE, typo: 1}
    (warning,) = [m for m in check_foundation() if m.id == "hotcache.W001"]
    assert typo in warning.msg and f"Did you mean HOTCACHE[{meant!r}]?" in warning.hint


def test_an_unknown_key_far_from_any_setting_gets_no_guess(settings):
    settings.HOTCACHE = {**settings.HOTCACHE, "COMPLETELY_UNRELATED": 1}
    (warning,) = [m for m in check_foundation() if m.id == "hotcache.W001"]
    assert "Did you mean" not in warning.hint


@pytest.mark.parametrize("debug", [True, False])
def test_the_in_process_stand_in_is_named_with_what_it_loses_whatever_debug(settings, monkeypatch, debug):
    settings.DEBUG = debug
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "mysite.settings")  # not a test settings module
    (warning,) = [m for m in check_foundation() if m.id == "hotcache.W003"]
    assert "mongomock://" in warning.msg and "manage.py apikeys create" in warning.hint


def test_a_real_mongodb_url_gets_no_stand_in_warning(settings, monkeypatch):
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "mysite.settings")
    settings.HOTCACHE = {**settings.HOTCACHE, "MONGO_URL": "mongodb://db.example:27017/app"}
    assert not [m for m in check_foundation() if m.id == "hotcache.W003"]


def test_every_check_id_belongs_to_one_checks_module():
    """Two modules raising the same id would make `SILENCED_SYSTEM_CHECKS` silence both (it happened in a merge)."""
    import re
    from pathlib import Path

    import hotcache.checks

    owners: dict[str, set[str]] = {}
    for module in Path(hotcache.checks.__file__).parent.glob("*.py"):
        for check_id in re.findall(r"id=\"(hotcache\.[EW]\d{3})\"", module.read_text(encoding="utf-8")):
            owners.setdefault(check_id, set()).add(module.name)
    shared = {check_id: sorted(names) for check_id, names in owners.items() if len(names) > 1}
    assert not shared
