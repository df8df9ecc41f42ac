import pytest
from django.test import override_settings

from hotcache.conf import DEFAULTS, hotcache_settings


def test_defaults_apply_when_host_sets_nothing(settings):
    settings.HOTCACHE = {}
    assert hotcache_settings.REDIS_ALIAS == "default"
    assert hotcache_settings.REDIS_DAILY_COMMAND_BUDGET == 10_000
    assert hotcache_settings.USER_CACHE_TTL == 300


def test_override_settings_is_seen_without_reload():
    with override_settings(HOTCACHE={"REDIS_DAILY_COMMAND_BUDGET": 5}):
        assert hotcache_settings.REDIS_DAILY_COMMAND_BUDGET == 5
    assert hotcache_settings.REDIS_DAILY_COMMAND_BUDGET == DEFAULTS["REDIS_DAILY_COMMAND_BUDGET"]


def test_unknown_setting_names_where_to_look():
    with pytest.raises(AttributeError, match=r"hotcache\.conf\.DEFAULTS"):
        hotcache_settings.NO_SUCH_SETTING  # noqa: B018


def test_features_subset(settings):
    settings.HOTCACHE = {"FEATURES": ["ratelimit"]}
    assert hotcache_settings.enabled("ratelimit")
    assert not hotcache_settings.enabled("mfa")


@pytest.mark.parametrize("value", [5, "ratelimit,users"])
def test_a_features_value_that_is_not_a_list_is_reported_not_raised(settings, value):
    from django.core.checks import run_checks

    settings.HOTCACHE = {**settings.HOTCACHE, "FEATURES": value}
    assert not hotcache_settings.enabled("users")  # no substring match of a string
    assert "hotcache.E006" in [m.id for m in run_checks()]  # every feature's check ran without raising


def test_derived_values_are_built_once_per_hotcache_dict(settings):
    from hotcache.conf import hotcache_settings

    builds = []

    def build():
        builds.append(1)
        return hotcache_settings.KEY_PREFIX

    first = hotcache_settings.derived("test.prefix", build)
    assert hotcache_settings.derived("test.prefix", build) == first
    assert len(builds) == 1
    settings.HOTCACHE = {**settings.HOTCACHE, "KEY_PREFIX": "other"}
    assert hotcache_settings.derived("test.prefix", build) == "other"
    assert len(builds) == 2
    hotcache_settings.reload()
    hotcache_settings.derived("test.prefix", build)
    assert len(builds) == 3


def test_concurrent_first_builds_of_a_derived_value_all_get_the_first_stored(settings):
    import threading

    from hotcache.conf import hotcache_settings

    hotcache_settings.reload()
    start = threading.Barrier(4)
    got = []

    def build():
        start.wait(5)  # every thread is inside build() before any stores its value
        return object()

    threads = [threading.Thread(target=lambda: got.append(hotcache_settings.derived("test.race", build)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(v) for v in got}) == 1
    assert hotcache_settings.derived("test.race", build) is got[0]
