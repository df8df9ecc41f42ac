"""System checks for SESSION_ENGINE = "hotcache.sessions": each names the setting and the fix."""

from __future__ import annotations

from hotcache.checks.sessions import check_sessions


def ids(messages):
    return [m.id for m in messages]


def test_configured_engine_passes():
    assert check_sessions() == []


def test_other_engines_are_not_checked(settings):
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django.contrib.sessions"]
    assert check_sessions() == []


def test_engine_without_the_sessions_app(settings):
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django.contrib.sessions"]
    (error,) = check_sessions()
    assert error.id == "hotcache.E110"
    assert "INSTALLED_APPS" in error.msg and "django.contrib.sessions" in error.hint


def test_engine_with_the_feature_disabled(hotcache_config):
    hotcache_config(FEATURES=["users"])
    (warning,) = check_sessions()
    assert warning.id == "hotcache.W110" and "HOTCACHE['FEATURES']" in warning.msg


def test_engine_without_session_middleware(settings):
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "SessionMiddleware" not in m]
    assert ids(check_sessions()) == ["hotcache.W111"]


def test_the_module_path_of_the_store_counts_too(settings):
    settings.SESSION_ENGINE = "hotcache.sessions.store"
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django.contrib.sessions"]
    assert ids(check_sessions()) == ["hotcache.E110"]
