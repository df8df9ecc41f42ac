"""hotcache.checks.middleware_order: E022 (CachedAuthenticationMiddleware without SessionMiddleware before it) and
W015 (RateLimitMiddleware before any authentication middleware while a rule keys on the user)."""

from __future__ import annotations

from typing import Any

from hotcache.checks import check_middleware_order

SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
DJANGO_AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
CACHED = "hotcache.middleware.CachedAuthenticationMiddleware"
LIMIT = "hotcache.middleware.RateLimitMiddleware"
USER_RULE = {"name": "per-user", "rate": "10/m", "key": "user_or_ip"}
IP_RULE = {"name": "per-ip", "rate": "10/m", "key": "ip"}


def ids() -> list[str]:
    return [m.id for m in check_middleware_order() if m.id]


def test_the_documented_order_is_clean(settings: Any, hotcache_config: Any) -> None:
    hotcache_config(RATELIMIT_RULES=[USER_RULE])
    settings.MIDDLEWARE = [SESSION, CACHED, LIMIT]
    assert ids() == []


def test_cached_authentication_before_sessions_is_e022(settings: Any) -> None:
    settings.MIDDLEWARE = [CACHED, SESSION]
    messages = check_middleware_order()
    assert [m.id for m in messages] == ["hotcache.E022"]
    assert "before SessionMiddleware" in messages[0].msg and SESSION in (messages[0].hint or "")


def test_cached_authentication_without_sessions_is_e022(settings: Any) -> None:
    settings.MIDDLEWARE = [CACHED]
    assert ids() == ["hotcache.E022"]


def test_a_user_rule_before_authentication_is_w015(settings: Any, hotcache_config: Any) -> None:
    hotcache_config(RATELIMIT_RULES=[IP_RULE, USER_RULE])
    settings.MIDDLEWARE = [SESSION, LIMIT, CACHED]
    messages = check_middleware_order()
    assert [m.id for m in messages] == ["hotcache.W015"]
    assert "per-user" in messages[0].msg and "per-ip" not in messages[0].msg
    settings.MIDDLEWARE = [SESSION, LIMIT]
    assert ids() == ["hotcache.W015"]
    settings.MIDDLEWARE = [SESSION, DJANGO_AUTH, LIMIT]  # Django's own middleware sets request.user too
    assert ids() == []


def test_rules_not_keyed_on_the_user_may_come_first(settings: Any, hotcache_config: Any) -> None:
    hotcache_config(RATELIMIT_RULES=[IP_RULE])
    settings.MIDDLEWARE = [LIMIT, SESSION, CACHED]
    assert ids() == []


def test_the_check_is_registered(settings: Any) -> None:
    from django.core import checks

    settings.MIDDLEWARE = [CACHED, SESSION]
    assert "hotcache.E022" in [m.id for m in checks.run_checks()]
