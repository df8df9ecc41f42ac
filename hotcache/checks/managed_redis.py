"""System checks for a managed Redis (E100-E109, W100-W109): what the provider requires of the URL, and what else
spends its command budget. Each message names the setting and the fix.

The eviction policy can only be read from the running server: ``manage.py hotcache_check`` reports it
(hotcache.backends.redis_profile).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from hotcache.checks._common import setting as _setting
from hotcache.conf import hotcache_settings

__all__ = ["CELERY_IDLE_COMMANDS_PER_DAY", "TLS_DATABASE_0_HOSTS", "check_managed_redis"]

# Hosts whose provider accepts TLS connections only and database 0 only (Upstash: SELECT of another fails).
TLS_DATABASE_0_HOSTS = (".upstash.io",)
# An idle Celery worker polls its Redis broker: measured with INFO commandstats over 120 s, 205 commands (BRPOP 117,
# PUBLISH 60, PING 11, ...), 194 of them billed (PING is not): ~97 a minute, ~140,000 a day
# (docs/operations/managed-redis.md, "What else spends the plan").
CELERY_IDLE_COMMANDS_PER_DAY = 140_000
_BUDGETS = ("REDIS_DAILY_COMMAND_BUDGET", "REDIS_MONTHLY_COMMAND_BUDGET")


@register(Tags.compatibility, Tags.caches)
def check_managed_redis(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    alias = hotcache_settings.REDIS_ALIAS
    cache = getattr(settings, "CACHES", {}).get(alias)
    if not isinstance(cache, dict):
        return []  # hotcache.E002 says so
    where = f"CACHES[{alias!r}]['LOCATION'] (named by {_setting('REDIS_ALIAS')})"
    locations = _urls(cache.get("LOCATION"))
    pool_db = ((cache.get("OPTIONS") or {}).get("CONNECTION_POOL_KWARGS") or {}).get("db")
    errors: list[CheckMessage] = []
    for url in locations:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if not host.endswith(TLS_DATABASE_0_HOSTS):
            continue
        if parts.scheme != "rediss":
            errors.append(
                Error(
                    f"{where} connects to {host} with {parts.scheme}://, but this provider accepts TLS only.",
                    hint="Use rediss://... (the same URL with TLS).",
                    id="hotcache.E100",
                )
            )
        db = _database(url) if pool_db is None else pool_db
        if str(db) != "0":
            errors.append(
                Error(
                    f"{where} selects database {db} on {host}, but this provider has database 0 only.",
                    hint="Use database 0 (the URL path /0) and tell apart what shares it by key prefix "
                    "(HOTCACHE['KEY_PREFIX'], the cache's KEY_PREFIX).",
                    id="hotcache.E101",
                )
            )
    budget = _budget_set()
    broker = getattr(settings, "CELERY_BROKER_URL", None)
    if budget and isinstance(broker, str) and _servers(_urls(broker)) & _servers(locations):
        errors.append(
            Warning(
                f"CELERY_BROKER_URL is the Redis hotcache uses ({where}), and {_setting(budget)} is set: "
                f"an idle Celery worker alone runs about {CELERY_IDLE_COMMANDS_PER_DAY:,} commands a day "
                "(BRPOP and PUBLISH polls, ~100 a minute, measured), billed on the same plan and not counted by "
                "hotcache's meter.",
                hint="Give Celery a broker of its own (another Redis, or RabbitMQ), or size the plan for it; "
                "see docs/operations/managed-redis.md.",
                id="hotcache.W100",
            )
        )
    return errors


def _urls(location: object) -> list[str]:
    """django-redis takes one URL or a list; Celery takes ';'-separated failover URLs."""
    items = location if isinstance(location, list | tuple) else [location]
    return [u.strip() for item in items if isinstance(item, str) for u in item.split(";") if u.strip()]


def _database(url: str) -> str:
    parts = urlsplit(url)
    query_db = parse_qs(parts.query).get("db")
    if query_db:
        return query_db[0]
    return parts.path.strip("/") or "0"


def _servers(urls: list[str]) -> set[tuple[str, int]]:
    out = set()
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in ("redis", "rediss") and parts.hostname:
            out.add((parts.hostname.lower(), parts.port or 6379))
    return out


def _budget_set() -> str:
    """The command budget the host set in HOTCACHE (not the default): its name, or ''."""
    user = hotcache_settings.user_settings
    return next((name for name in _BUDGETS if user.get(name)), "")
