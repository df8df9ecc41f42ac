"""System checks for the foundation (E001-E009, W001-W009; E150-E159 the MongoDB pool). Each message names the
setting and the fix."""

from __future__ import annotations

import difflib
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from hotcache.checks._common import (
    MONGO_FEATURES as _MONGO_FEATURES,
)
from hotcache.checks._common import (
    PREFIX as _PREFIX,
)
from hotcache.checks._common import (
    is_number,
    number_setting_errors,
    range_errors,
)
from hotcache.checks._common import (
    setting as _setting,
)
from hotcache.checks._common import (
    settings_module as _settings_module,
)
from hotcache.conf import DEFAULTS, FEATURES, hotcache_settings

MONGO_MONITORING_MODES = ("poll", "stream", "auto")  # pymongo serverMonitoringMode


@register(Tags.compatibility, Tags.caches)
def check_foundation(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    raw = getattr(settings, "HOTCACHE", {})
    if not isinstance(raw, dict):
        return [
            Error(
                f"HOTCACHE must be a dict, not {type(raw).__name__}.",
                hint="Set HOTCACHE = {...} in your settings; see hotcache.conf for the keys.",
                id="hotcache.E001",
            )
        ]
    for name in sorted(set(raw) - set(DEFAULTS), key=str):
        errors.append(
            Warning(
                f"HOTCACHE[{name!r}] is not a hotcache setting and is ignored.",
                hint=_did_you_mean(name),
                id="hotcache.W001",
            )
        )

    # Redis alias (unused when HOTCACHE['REDIS_URL'] is set: checks/redis_target.py)
    alias = hotcache_settings.REDIS_ALIAS
    caches = getattr(settings, "CACHES", {})
    if hotcache_settings.REDIS_URL:
        pass
    elif alias not in caches:
        errors.append(
            Error(
                f"{_setting('REDIS_ALIAS')}={alias!r} is not in CACHES.",
                hint=f"Add a django-redis cache named {alias!r} to CACHES, or point REDIS_ALIAS at one.",
                id="hotcache.E002",
            )
        )
    else:
        backend = str(caches[alias].get("BACKEND", ""))
        if not backend.startswith("django_redis."):
            errors.append(
                Error(
                    f"CACHES[{alias!r}] (named by {_setting('REDIS_ALIAS')}) uses {backend!r}, "
                    "not a django-redis backend.",
                    hint="Use 'django_redis.cache.RedisCache' for that alias; hotcache needs a real Redis "
                    "client for Lua scripts and its connection pool.",
                    id="hotcache.E003",
                )
            )

    prefix = hotcache_settings.KEY_PREFIX
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        errors.append(
            Error(
                f"{_setting('KEY_PREFIX')}={prefix!r} is not a valid key prefix.",
                hint="Use 1-32 characters from A-Z a-z 0-9 _ . - (no ':', braces or spaces).",
                id="hotcache.E005",
            )
        )

    errors += number_setting_errors(
        ("REDIS_SOCKET_TIMEOUT", "REDIS_CONNECT_TIMEOUT", "HEALTH_COOLDOWN", "HEALTH_QUOTA_COOLDOWN")
    )
    errors += number_setting_errors(
        (
            "HEALTH_FAILURE_THRESHOLD",
            "REDIS_DAILY_COMMAND_BUDGET",
            "REDIS_MONTHLY_COMMAND_BUDGET",
            "REDIS_MEMORY_LIMIT",
            "METER_FLUSH_EVERY",
            "MONGO_MAX_POOL_SIZE",
            "MONGO_WAIT_QUEUE_TIMEOUT_MS",
            "MONGO_SERVER_SELECTION_TIMEOUT_MS",
            "MONGO_CONNECT_TIMEOUT_MS",
            "MONGO_SOCKET_TIMEOUT_MS",
            "MONGO_SERVER_CONNECTION_LIMIT",
        ),
        integer=True,
    )
    errors += number_setting_errors(("MONGO_HEALTHY_WAIT_MS", "MONGO_MAX_IDLE_TIME_MS"), integer=True, allow_zero=True)
    errors += _healthy_pool_errors()
    errors += _overflow_cap_errors()
    monitoring = hotcache_settings.MONGO_SERVER_MONITORING_MODE
    if monitoring not in MONGO_MONITORING_MODES:
        errors.append(
            Error(
                f"{_setting('MONGO_SERVER_MONITORING_MODE')}={monitoring!r} is not a pymongo serverMonitoringMode.",
                hint=f"Use one of {list(MONGO_MONITORING_MODES)}: 'poll' (the default) keeps one monitoring "
                "connection per process, 'stream' two.",
                id="hotcache.E009",
            )
        )
    for name in ("REDIS_SOCKET_TIMEOUT", "REDIS_CONNECT_TIMEOUT"):
        value = getattr(hotcache_settings, name)
        if is_number(value) and value > 5:
            errors.append(
                Warning(
                    f"{_setting(name)}={value!r} seconds: every request may wait this long on a sick Redis.",
                    hint="Keep hotcache's Redis timeouts near 4 x the round trip 'manage.py hotcache_check' measures "
                    "(default 0.5, which fits a TLS Redis in another region).",
                    id="hotcache.W002",
                )
            )

    features = hotcache_settings.FEATURES
    if features is not None and (
        not isinstance(features, list | tuple) or any(f not in FEATURES for f in features)
    ):
        errors.append(
            Error(
                f"{_setting('FEATURES')}={features!r} names unknown features.",
                hint=f"Use None (all) or a list drawn from {list(FEATURES)}.",
                id="hotcache.E006",
            )
        )
        features = None

    # MongoDB URL, where a feature needs one
    needing = [f for f in _MONGO_FEATURES if features is None or f in features]
    url = hotcache_settings.MONGO_URL
    if needing and not url:
        errors.append(
            Error(
                f"{_setting('MONGO_URL')} is not set, but {', '.join(needing)} keep durable data in MongoDB.",
                hint="Set it to mongodb://... or mongodb+srv://... (production) or mongomock://hotcache "
                "(tests, single-process development), or disable those features in HOTCACHE['FEATURES'].",
                id="hotcache.E007",
            )
        )
    elif url:
        from hotcache.backends.mongo import SCHEMES, is_process_local, url_scheme

        if not isinstance(url, str) or url_scheme(url) not in SCHEMES:
            errors.append(
                Error(
                    f"{_setting('MONGO_URL')}={str(url)[:40]!r}... has an unsupported scheme.",
                    hint="Use mongodb://, mongodb+srv:// or mongomock://<database>.",
                    id="hotcache.E008",
                )
            )
        elif is_process_local(url) and "test" not in _settings_module():
            errors.append(
                Warning(
                    f"{_setting('MONGO_URL')} uses the in-process MongoDB stand-in (mongomock://): what hotcache "
                    "keeps durably lives only in the process that wrote it and is gone when it exits.",
                    hint="Lost between processes: what a Celery worker's syncs write (analytics, usage and "
                    "workbench history) never reaches the web process, and the commands that write durable data "
                    "('manage.py apikeys create', sync_analytics, persist_workbench, sync_apikey_usage) refuse "
                    "to run against it. Fine for the demo and tests; point MONGO_URL at a real MongoDB "
                    "(mongodb:// or mongodb+srv://) for anything else.",
                    id="hotcache.W003",
                )
            )
    return errors


def _healthy_pool_errors() -> list[CheckMessage]:
    """hotcache.E150: MONGO_HEALTHY_POOL_SIZE is a whole number from 0 to MONGO_MAX_POOL_SIZE."""
    value = hotcache_settings.MONGO_HEALTHY_POOL_SIZE
    top = hotcache_settings.MONGO_MAX_POOL_SIZE
    if is_number(value, integer=True) and 0 <= value and (not isinstance(top, int) or value <= top):
        return []
    return [
        Error(
            f"{_setting('MONGO_HEALTHY_POOL_SIZE')}={value!r} is not a whole number from 0 to "
            f"MONGO_MAX_POOL_SIZE ({top!r}).",
            hint="It is how many MongoDB calls a process runs at once while Redis is healthy (default 1: one pooled "
            "connection per process); the fallbacks get MONGO_MAX_POOL_SIZE during an outage. 0 removes the limit.",
            id="hotcache.E150",
        )
    ]


def _overflow_cap_errors() -> list[CheckMessage]:
    """hotcache.E151: MONGO_HEALTHY_MAX_OVERFLOW is a whole number from 0 to MONGO_MAX_POOL_SIZE."""
    top = hotcache_settings.MONGO_MAX_POOL_SIZE
    return range_errors(
        "MONGO_HEALTHY_MAX_OVERFLOW", 0, top if is_number(top, integer=True) else float("inf"),
        f"is not a whole number from 0 to MONGO_MAX_POOL_SIZE ({top!r}).",
        hint="It is how many more MongoDB calls a process may run at once while Redis is healthy once calls have "
        "waited MONGO_HEALTHY_WAIT_MS (default 2: a stalled MongoDB costs each process at most 2 more connections); "
        "calls beyond it wait MONGO_WAIT_QUEUE_TIMEOUT_MS more and then fail as MongoDB unavailable. 0: never more "
        "than MONGO_HEALTHY_POOL_SIZE.",
        check_id="hotcache.E151",
    )


# Names users reach for by habit (other libraries, environment variables) and the setting they mean.
_KNOWN_ALIASES = {"MONGO_URI": "MONGO_URL", "MONGODB_URL": "MONGO_URL", "MONGODB_URI": "MONGO_URL"}


def _did_you_mean(name: object) -> str:
    """The hint of W001: the closest setting name, if one is close, else where the settings are listed."""
    text = str(name).upper()
    match = _KNOWN_ALIASES.get(text) or next(iter(difflib.get_close_matches(text, DEFAULTS, n=1, cutoff=0.75)), None)
    if match is not None:
        return f"Did you mean HOTCACHE[{match!r}]? (Every setting is listed in README.md, section Settings.)"
    return "Check the spelling against README.md, section Settings."
