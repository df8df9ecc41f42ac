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
                    hint="Keep hotcache's Redis timeouts well under 1 second (default 0.05).",
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


@register(Tags.compatibility)
def check_ratelimit(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E010-E019: RATELIMIT_RULES (rate, key, name, policy, path regex, fields), policy, proxies, prefixes.

    W010: a rule keyed on the client address that skips requests without one.
    """
    import ipaddress

    from hotcache.clientip import UNIX_PEER
    from hotcache.ratelimit import MISSING_KEY_CHOICES, POLICIES
    from hotcache.ratelimit_middleware import rule_errors, rule_warnings

    raw = getattr(settings, "HOTCACHE", {})
    if not isinstance(raw, dict):
        return []
    errors: list[CheckMessage] = []
    rules = hotcache_settings.RATELIMIT_RULES
    if rules is None:
        rules = []
    if not isinstance(rules, list | tuple):
        errors.append(Error(f"{_setting('RATELIMIT_RULES')} is a {type(rules).__name__}, not a list.",
                            hint="Set it to a list of rule dicts (see README, Rate limiting).", id="hotcache.E017"))
        rules = []
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        problems = rule_errors(i, rule, seen)
        for check_id, message, hint in problems:
            errors.append(Error(message, hint=hint, id=check_id))
        if not problems:
            for check_id, message, hint in rule_warnings(i, rule):
                errors.append(Warning(message, hint=hint, id=check_id))
    policy = hotcache_settings.RATELIMIT_DEFAULT_POLICY
    if policy not in POLICIES:
        errors.append(Error(f"{_setting('RATELIMIT_DEFAULT_POLICY')}={policy!r} is not an outage policy.",
                            hint="Use 'open', 'closed' or 'local' (default 'local').", id="hotcache.E014"))
    missing = hotcache_settings.RATELIMIT_ON_MISSING_KEY
    if missing not in MISSING_KEY_CHOICES:
        errors.append(Error(f"{_setting('RATELIMIT_ON_MISSING_KEY')}={missing!r:.80} is not 'skip', 'shared' or "
                            "'deny'.",
                            hint="It says what ratelimit/is_ratelimited/get_usage do when the key gives no "
                                 "identifier; default 'shared' (one bucket, as django-ratelimit).",
                            id="hotcache.E014"))
    proxies = hotcache_settings.TRUSTED_PROXIES
    if not isinstance(proxies, list | tuple):
        errors.append(Error(f"{_setting('TRUSTED_PROXIES')}={proxies!r} is not a list of CIDRs.",
                            hint="Use a list such as ['10.0.0.0/8', '2001:db8::/32'] (default []).",
                            id="hotcache.E016"))
        proxies = []
    for cidr in proxies:
        if str(cidr).strip().lower() == UNIX_PEER:
            continue
        try:
            ipaddress.ip_network(str(cidr).strip(), strict=False)
        except ValueError:
            errors.append(Error(f"{_setting('TRUSTED_PROXIES')} entry {cidr!r} is not an IP network.",
                                hint="Write each trusted proxy as a CIDR ('10.0.0.0/8') or an address, or 'unix' "
                                     "for a proxy on a Unix socket.",
                                id="hotcache.E016"))
    header = hotcache_settings.TRUSTED_PROXY_HEADER
    if str(header).lower() not in ("x-forwarded-for", "forwarded"):
        errors.append(Error(f"{_setting('TRUSTED_PROXY_HEADER')}={header!r} is not supported.",
                            hint="Use 'x-forwarded-for' or 'forwarded' (RFC 7239): the header your proxies append.",
                            id="hotcache.E016"))
    status = hotcache_settings.RATELIMIT_STATUS_CODE
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        errors.append(Error(f"{_setting('RATELIMIT_STATUS_CODE')}={status!r} is not a 4xx/5xx status.",
                            hint="Use 429 (default) or 403.", id="hotcache.E018"))
    for name, top in (("IPV6_PREFIX", 128), ("IPV4_PREFIX", 32)):
        value = getattr(hotcache_settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
            errors.append(Error(f"{_setting(name)}={value!r} is not a prefix length.",
                                hint=f"Use a whole number from 1 to {top} (default {DEFAULTS[name]}).",
                                id="hotcache.E019"))
    errors += number_setting_errors(("RATELIMIT_DENY_CACHE_SIZE",), integer=True, allow_zero=True)
    return errors

# --- Cached users (E020-E029) ---


@register(Tags.compatibility)
def check_users(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from django.utils.module_loading import import_string

    if not hotcache_settings.enabled("users"):
        return []
    errors = number_setting_errors(("USER_CACHE_TTL",), integer=True)
    path = hotcache_settings.USER_LOADER
    try:
        loader = import_string(path) if isinstance(path, str) else None
    except ImportError as exc:
        loader = None
        reason = str(exc)
    else:
        reason = "not a dotted path" if loader is None else ""
    from hotcache.users import CachedAuthenticationMiddleware, UserLoader

    if loader is None:
        errors.append(
            Error(
                f"{_setting('USER_LOADER')}={path!r} cannot be imported ({reason}).",
                hint="Use 'hotcache.users.DjangoUserLoader' (default), 'hotcache.users.MongoUserLoader', "
                "or the dotted path of your own hotcache.users.UserLoader subclass.",
                id="hotcache.E020",
            )
        )
    elif not (isinstance(loader, type) and issubclass(loader, UserLoader)):
        errors.append(
            Error(
                f"{_setting('USER_LOADER')}={path!r} is not a hotcache.users.UserLoader subclass.",
                hint="Subclass hotcache.users.UserLoader (load, handles, rebuild) or use DjangoUserLoader.",
                id="hotcache.E021",
            )
        )
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    ours = [m for m in middleware if m.endswith(CachedAuthenticationMiddleware.__name__)]
    if ours and "django.contrib.auth.middleware.AuthenticationMiddleware" in middleware:
        errors.append(
            Warning(
                "MIDDLEWARE has both Django's AuthenticationMiddleware and hotcache's CachedAuthenticationMiddleware "
                f"(configured by {_setting('USER_LOADER')}); the later one wins and the other loads users for nothing.",
                hint="Replace 'django.contrib.auth.middleware.AuthenticationMiddleware' with "
                "'hotcache.middleware.CachedAuthenticationMiddleware'.",
                id="hotcache.W020",
            )
        )
    return errors


# --- MFA codes (E030-E039) ---


@register(Tags.compatibility)
def check_mfa(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """MFA code settings: whole numbers, and values that keep guessing a code hard."""
    if not hotcache_settings.enabled("mfa"):
        return []
    errors = number_setting_errors(
        (
            "MFA_CODE_TTL",
            "MFA_DIGITS",
            "MFA_MAX_ATTEMPTS",
            "MFA_USER_FAILURE_LIMIT",
            "MFA_USER_FAILURE_WINDOW",
            "MFA_HOURLY_SEND_CAP",
        ),
        integer=True,
    )
    errors += number_setting_errors(("MFA_RESEND_COOLDOWN",), integer=True, allow_zero=True)
    if errors:
        return errors
    digits = hotcache_settings.MFA_DIGITS
    if not 6 <= digits <= 10:
        errors.append(
            Error(
                f"{_setting('MFA_DIGITS')}={digits!r} is outside 6-10.",
                hint="Use 6 to 10 digits (default 6): fewer make a code guessable, more do not fit an SMS line.",
                id="hotcache.E030",
            )
        )
    attempts = hotcache_settings.MFA_MAX_ATTEMPTS
    if attempts > 10:
        errors.append(
            Error(
                f"{_setting('MFA_MAX_ATTEMPTS')}={attempts!r} allows too many guesses per code.",
                hint="Use at most 10 wrong guesses per code (default 5; RFC 4226 section 7.3).",
                id="hotcache.E031",
            )
        )
    ttl = hotcache_settings.MFA_CODE_TTL
    if ttl > 3600:
        errors.append(
            Error(
                f"{_setting('MFA_CODE_TTL')}={ttl!r} seconds keeps codes alive for more than an hour.",
                hint="Use at most 3600 seconds (default 300): a one-time code should be short-lived.",
                id="hotcache.E032",
            )
        )
    limit = hotcache_settings.MFA_USER_FAILURE_LIMIT
    if limit < attempts:
        errors.append(
            Warning(
                f"{_setting('MFA_USER_FAILURE_LIMIT')}={limit!r} is below {_setting('MFA_MAX_ATTEMPTS')}={attempts!r}.",
                hint="The per-user cap then locks users out before a code uses its own attempts; "
                "set MFA_USER_FAILURE_LIMIT to at least MFA_MAX_ATTEMPTS (default 10 and 5).",
                id="hotcache.W030",
            )
        )
    return errors

# --- API keys (E040-E049) ---


@register(Tags.compatibility)
def check_apikeys(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if not hotcache_settings.enabled("apikeys"):
        return []
    errors = number_setting_errors(
        ("APIKEY_USAGE_RETENTION_DAYS", "APIKEY_CACHE_TTL", "APIKEY_INVALID_CACHE_TTL"), integer=True
    )
    days = hotcache_settings.APIKEY_USAGE_RETENTION_DAYS
    if isinstance(days, int) and not isinstance(days, bool) and days == 1:
        errors.append(
            Error(
                f"{_setting('APIKEY_USAGE_RETENTION_DAYS')}=1: yesterday's counters would expire before the "
                "first usage sync after midnight copies them to MongoDB.",
                hint="Use 2 or more (default 30).",
                id="hotcache.E040",
            )
        )
    header = hotcache_settings.APIKEY_HEADER
    if not isinstance(header, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9\-]{0,63}", header) or (
        header.lower() == "authorization"
    ):
        errors.append(
            Error(
                f"{_setting('APIKEY_HEADER')}={header!r} is not a usable HTTP header name.",
                hint="Use letters, digits and '-' (default 'X-Api-Key'); "
                "'Authorization: Api-Key <key>' is always read as well.",
                id="hotcache.E041",
            )
        )
    return errors

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


# Python's json (like most JSON libraries) recurses once per level and fails near 1000 levels: a deeper
# limit would let a state through the depth check only to fail in the encoder or in a client's decoder.
_WORKBENCH_DEPTH_CEILING = 512


def _workbench_depth_errors() -> list[CheckMessage]:
    depth = hotcache_settings.WORKBENCH_MAX_DEPTH
    if isinstance(depth, int) and not isinstance(depth, bool) and 0 < depth <= _WORKBENCH_DEPTH_CEILING:
        return []
    return [
        Error(
            f"{_setting('WORKBENCH_MAX_DEPTH')}={depth!r} is not a whole number from 1 to {_WORKBENCH_DEPTH_CEILING}.",
            hint="It bounds how deeply objects and arrays may nest in a workbench state (default 64); save() "
            "refuses deeper states with ValueError before encoding them.",
            id="hotcache.E056",
        )
    ]


@register(Tags.compatibility)
def check_workbench(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if not hotcache_settings.enabled("workbench"):
        return []
    errors = number_setting_errors(_WORKBENCH_NUMBERS, integer=True)
    if errors:
        return errors + _workbench_depth_errors()
    errors = _workbench_depth_errors()
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
    durable = hotcache_settings.WORKBENCH_DURABLE_SAVES
    if not isinstance(durable, bool):
        errors.append(
            Error(
                f"{_setting('WORKBENCH_DURABLE_SAVES')}={durable!r} is not True or False.",
                hint="Use True (default: every save is also copied to MongoDB workbench_active, so sessions stay "
                "loadable during a Redis outage) or False (Redis only; one MongoDB write less per save).",
                id="hotcache.E055",
            )
        )
    return errors

# --- Analytics (E060-E069) ---


@register(Tags.compatibility)
def check_analytics(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E060 sync chunk over 1000; E061 path-prefix lists; E062 retention too short; E063 path length; E064 grace."""
    errors = number_setting_errors(
        (
            "ANALYTICS_RETENTION_HOURS",
            "ANALYTICS_MAX_COUNTERS_PER_HOUR",
            "ANALYTICS_MAX_EVENTS_PER_DAY",
            "ANALYTICS_MAX_PATH_LENGTH",
            "ANALYTICS_SYNC_CHUNK",
            "ANALYTICS_FALLBACK_BUFFER_SIZE",
            "ANALYTICS_TRACK_MAX_BODY",
        ),
        integer=True,
    )
    errors += number_setting_errors(("ANALYTICS_SYNC_LOCK_TIMEOUT",), integer=True, allow_zero=True)
    errors += number_setting_errors(("ANALYTICS_SYNC_GRACE",), allow_zero=True)
    errors += number_setting_errors(("ANALYTICS_FALLBACK_FLUSH_INTERVAL",))
    chunk = hotcache_settings.ANALYTICS_SYNC_CHUNK
    if isinstance(chunk, int) and chunk > 1000:
        errors.append(
            Error(
                f"{_setting('ANALYTICS_SYNC_CHUNK')}={chunk!r} is over 1000 counters per MongoDB bulk write.",
                hint="Use 1-1000 (default 1000): larger batches risk MongoDB's message limits and M0 throttling.",
                id="hotcache.E060",
            )
        )
    for name in ("ANALYTICS_MIDDLEWARE_INCLUDE", "ANALYTICS_MIDDLEWARE_EXCLUDE"):
        value = getattr(hotcache_settings, name)
        if not isinstance(value, list | tuple) or not all(isinstance(p, str) and p.startswith("/") for p in value):
            errors.append(
                Error(
                    f"{_setting(name)}={value!r} is not a list of path prefixes.",
                    hint=f"Use a list of strings starting with '/', e.g. {DEFAULTS[name]!r}.",
                    id="hotcache.E061",
                )
            )
    retention = hotcache_settings.ANALYTICS_RETENTION_HOURS
    if isinstance(retention, int) and not isinstance(retention, bool) and 0 < retention < 48:
        errors.append(
            Error(
                f"{_setting('ANALYTICS_RETENTION_HOURS')}={retention!r}: counters not synced within this many hours "
                "expire from Redis.",
                hint="Use at least 48 (default 168) so a missed hourly sync or a weekend outage loses nothing.",
                id="hotcache.E062",
            )
        )
    length = hotcache_settings.ANALYTICS_MAX_PATH_LENGTH
    if isinstance(length, int) and not isinstance(length, bool) and not 16 <= length <= 1024:
        errors.append(
            Error(
                f"{_setting('ANALYTICS_MAX_PATH_LENGTH')}={length!r} is outside 16-1024.",
                hint="Use 16-1024 characters (default 200): paths are stored per counter in Redis and MongoDB.",
                id="hotcache.E063",
            )
        )
    grace = hotcache_settings.ANALYTICS_SYNC_GRACE
    if isinstance(grace, int | float) and not isinstance(grace, bool) and grace >= 3600:
        errors.append(
            Error(
                f"{_setting('ANALYTICS_SYNC_GRACE')}={grace!r} seconds is an hour or more.",
                hint="Use 0-3599 seconds (default 300): the hourly sync claims an hour this long after it ends.",
                id="hotcache.E064",
            )
        )
    return errors

# --- Reports (E070-E079) ---


@register(Tags.compatibility)
def check_reports(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    days = hotcache_settings.REPORTS_DAYS
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 40:
        errors.append(
            Error(
                f"{_setting('REPORTS_DAYS')}={days!r} is not a whole number of days from 1 to 40.",
                hint="The meter keeps 40 days; use a whole number from 1 to 40 (default 30).",
                id="hotcache.E070",
            )
        )
    pct = hotcache_settings.REPORTS_WARNING_PERCENT
    if not isinstance(pct, int | float) or isinstance(pct, bool) or not 0 < pct <= 100:
        errors.append(
            Error(
                f"{_setting('REPORTS_WARNING_PERCENT')}={pct!r} is not a percentage above 0 and at most 100.",
                hint="Use a number such as 80 (default): the reports warn at that share of a budget or limit.",
                id="hotcache.E071",
            )
        )
    perm = hotcache_settings.REPORTS_PERMISSION
    if perm is not None and not (isinstance(perm, str) and re.fullmatch(r"[\w]+\.[\w]+", perm)):
        errors.append(
            Error(
                f"{_setting('REPORTS_PERMISSION')}={perm!r} is not a permission name.",
                hint="Use None (any active staff user) or 'app_label.codename', e.g. 'auth.view_user'.",
                id="hotcache.E072",
            )
        )
    return errors
