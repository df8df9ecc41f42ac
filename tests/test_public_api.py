import importlib

import pytest

import hotcache

MODULES = [
    "hotcache", "hotcache.keys", "hotcache.exceptions", "hotcache.metering", "hotcache.testing",
    "hotcache.backends.redis", "hotcache.backends.mongo", "hotcache.backends.health",
    # the features
    "hotcache.ratelimit", "hotcache.ratelimit_middleware", "hotcache.clientip", "hotcache.users", "hotcache.mfa",
    "hotcache.apikeys", "hotcache.apikeys_drf", "hotcache.workbench", "hotcache.analytics", "hotcache.reports",
    "hotcache.admin", "hotcache.middleware", "hotcache.tasks",
]


def test_contract_names_exist():
    """The names the issues promise, exactly as spelled there."""
    from hotcache import analytics, apikeys, mfa, ratelimit, users, workbench
    from hotcache.middleware import CachedAuthenticationMiddleware, RateLimitMiddleware  # noqa: F401
    from hotcache.tasks import persist_workbench_sessions, sync_analytics

    assert sync_analytics.name == "hotcache.tasks.sync_analytics"
    assert persist_workbench_sessions.name == "hotcache.tasks.persist_workbench_sessions"
    for module, names in {
        ratelimit: ["ratelimit", "is_ratelimited", "get_usage", "ALL", "UNSAFE", "Ratelimited"],
        users: ["get_cached_user", "invalidate_user", "CachedAuthenticationMiddleware"],
        mfa: ["issue", "verify", "ResendTooSoon", "VerifyResult"],
        apikeys: ["create", "check", "revoke", "get", "list_keys", "usage", "InvalidKey", "NewKey", "Usage",
                  "require_api_key"],
        workbench: ["save", "load", "end", "history", "Conflict", "Session"],
        analytics: ["track", "report"],
    }.items():
        missing = [n for n in names if not hasattr(module, n)]
        assert not missing, f"{module.__name__} lacks {missing}"


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_importable(name):
    module = importlib.import_module(name)
    # isort-style order, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions
    def order(n):
        return (0 if n.isupper() else 1 if n[:1].isupper() else 2, n)

    assert list(module.__all__) == sorted(module.__all__, key=order)
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"


def test_version():
    assert hotcache.__version__
