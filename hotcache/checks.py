"""Django system checks for HOTCACHE. Each message names the setting and the fix.

Ids: E001-E009 foundation; E010-E019 rate limiting; E020-E029 cached users; E030-E039 MFA;
E040-E049 API keys; E050-E059 workbench; E060-E069 analytics; E070-E079 reports. W0xx are warnings.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from hotcache.conf import DEFAULTS, FEATURES, hotcache_settings

__all__ = ["check_foundation", "number_setting_errors"]

_MONGO_FEATURES = ("mfa", "apikeys", "workbench", "analytics")
_PREFIX = re.compile(r"[A-Za-z0-9_.\-]{1,32}")


def _setting(name: str) -> str:
    return f"HOTCACHE[{name!r}]"


def number_setting_errors(
    names: tuple[str, ...], *, minimum: float = 0, integer: bool = False, allow_zero: bool = False
) -> list[CheckMessage]:
    """hotcache.E004 for every named setting that is not a positive number (or int)."""
    errors: list[CheckMessage] = []
    for name in names:
        value = getattr(hotcache_settings, name)
        kind = int if integer else (int, float)
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok:
            ok = value >= minimum if allow_zero else value > minimum
        if not ok:
            errors.append(
                Error(
                    f"{_setting(name)}={value!r} is not a valid value.",
                    hint=f"Use a {'whole ' if integer else ''}number greater than {minimum}"
                    f"{' or equal to it' if allow_zero else ''} (default {DEFAULTS[name]!r}).",
                    id="hotcache.E004",
                )
            )
    return errors


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
    for name in sorted(set(raw) - set(DEFAULTS)):
        errors.append(
            Warning(
                f"HOTCACHE[{name!r}] is not a hotcache setting and is ignored.",
                hint="Check the spelling against README.md, section Settings.",
                id="hotcache.W001",
            )
        )

    # Redis alias
    alias = hotcache_settings.REDIS_ALIAS
    caches = getattr(settings, "CACHES", {})
    if alias not in caches:
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

    errors += number_setting_errors(("REDIS_SOCKET_TIMEOUT", "REDIS_CONNECT_TIMEOUT", "HEALTH_COOLDOWN"))
    errors += number_setting_errors(
        (
            "HEALTH_FAILURE_THRESHOLD",
            "REDIS_DAILY_COMMAND_BUDGET",
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
    for name in ("REDIS_SOCKET_TIMEOUT", "REDIS_CONNECT_TIMEOUT"):
        value = getattr(hotcache_settings, name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 5:
            errors.append(
                Warning(
                    f"{_setting(name)}={value!r} seconds: every request may wait this long on a sick Redis.",
                    hint="Keep hotcache's Redis timeouts well under 1 second (default 0.1).",
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
        from hotcache.backends.mongo import SCHEMES, url_scheme

        if not isinstance(url, str) or url_scheme(url) not in SCHEMES:
            errors.append(
                Error(
                    f"{_setting('MONGO_URL')}={str(url)[:40]!r}... has an unsupported scheme.",
                    hint="Use mongodb://, mongodb+srv:// or mongomock://<database>.",
                    id="hotcache.E008",
                )
            )
        elif url_scheme(url) == "mongomock" and not settings.DEBUG and "test" not in _settings_module():
            errors.append(
                Warning(
                    f"{_setting('MONGO_URL')} uses the in-process stand-in (mongomock://) with DEBUG off.",
                    hint="Its data lives in one process and is lost on restart; point MONGO_URL at a real "
                    "MongoDB in production.",
                    id="hotcache.W003",
                )
            )
    return errors


def _settings_module() -> str:
    import os

    return os.environ.get("DJANGO_SETTINGS_MODULE", "")


# Feature checks follow, each registered with @register under its own id range.

# --- Rate limiting (E010-E019) ---

# --- Cached users (E020-E029) ---

# --- MFA codes (E030-E039) ---

# --- API keys (E040-E049) ---

# --- Workbench (E050-E059) ---
_WORKBENCH_NUMBERS = (
    "WORKBENCH_IDLE_TIMEOUT",
    "WORKBENCH_MAX_STATE_BYTES",
    "WORKBENCH_PERSIST_IDLE_AFTER",
    "WORKBENCH_PERSIST_INTERVAL",
    "WORKBENCH_CLAIM_TIMEOUT",
    "WORKBENCH_ENDED_TTL",
    "WORKBENCH_PERSIST_BATCH",
)
_WORKBENCH_TASK = "hotcache.tasks.persist_workbench_sessions"
_MONGO_DOCUMENT_LIMIT = 16 * 1024 * 1024


def _schedule_seconds(schedule: Any) -> float | None:
    if isinstance(schedule, int | float) and not isinstance(schedule, bool):
        return float(schedule)
    if hasattr(schedule, "total_seconds"):
        return float(schedule.total_seconds())
    run_every = getattr(schedule, "run_every", None)  # celery.schedules.schedule
    return float(run_every.total_seconds()) if run_every is not None else None


@register(Tags.compatibility)
def check_workbench(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if not hotcache_settings.enabled("workbench"):
        return []
    errors = number_setting_errors(_WORKBENCH_NUMBERS, integer=True)
    if errors:
        return errors
    idle = hotcache_settings.WORKBENCH_IDLE_TIMEOUT
    after = hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER
    every = hotcache_settings.WORKBENCH_PERSIST_INTERVAL
    claim = hotcache_settings.WORKBENCH_CLAIM_TIMEOUT
    if after + every + claim >= idle:
        errors.append(
            Error(
                f"{_setting('WORKBENCH_PERSIST_IDLE_AFTER')}={after} + {_setting('WORKBENCH_PERSIST_INTERVAL')}"
                f"={every} + {_setting('WORKBENCH_CLAIM_TIMEOUT')}={claim} is not below "
                f"{_setting('WORKBENCH_IDLE_TIMEOUT')}={idle}: an abandoned session could expire in Redis "
                "before the persister moves it to history.",
                hint="Lower WORKBENCH_PERSIST_IDLE_AFTER (default 2700) or raise WORKBENCH_IDLE_TIMEOUT "
                "(default 3600) so that the sum stays below it.",
                id="hotcache.E051",
            )
        )
    size = hotcache_settings.WORKBENCH_MAX_STATE_BYTES
    if size > _MONGO_DOCUMENT_LIMIT - 64 * 1024:
        errors.append(
            Error(
                f"{_setting('WORKBENCH_MAX_STATE_BYTES')}={size} does not fit in a MongoDB document (16 MiB) "
                "with the history record's other fields.",
                hint="Keep it under 16,000,000 (default 1,000,000); large states also cost Redis memory.",
                id="hotcache.E052",
            )
        )
    ended_ttl = hotcache_settings.WORKBENCH_ENDED_TTL
    if ended_ttl <= every + claim:
        errors.append(
            Error(
                f"{_setting('WORKBENCH_ENDED_TTL')}={ended_ttl} is not above {_setting('WORKBENCH_PERSIST_INTERVAL')}"
                f" + {_setting('WORKBENCH_CLAIM_TIMEOUT')} ({every + claim}): an ended session could expire "
                "before the persister (or its recovery run) writes it to history.",
                hint="Use at least a few persister intervals; the default 86400 also rides out a MongoDB outage "
                "of up to a day.",
                id="hotcache.E053",
            )
        )
    beat = getattr(settings, "CELERY_BEAT_SCHEDULE", None) or {}
    for name, entry in beat.items():
        if not isinstance(entry, dict) or entry.get("task") != _WORKBENCH_TASK:
            continue
        seconds = _schedule_seconds(entry.get("schedule"))
        if seconds is not None and seconds > every:
            errors.append(
                Error(
                    f"CELERY_BEAT_SCHEDULE[{name!r}] runs {_WORKBENCH_TASK} every {seconds:g} s, less often than "
                    f"{_setting('WORKBENCH_PERSIST_INTERVAL')}={every} assumed by the idle timeouts.",
                    hint="Schedule it at least every WORKBENCH_PERSIST_INTERVAL seconds, or raise that setting "
                    "(and keep hotcache.E051 satisfied).",
                    id="hotcache.E054",
                )
            )
    return errors

# --- Analytics (E060-E069) ---

# --- Reports (E070-E079) ---
