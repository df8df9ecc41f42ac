"""System checks for rate limiting (E010-E019, W010-W019) and django-ratelimit's settings (E090). Each message
names the setting and the fix."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from hotcache.checks._common import (
    is_number,
    number_setting_errors,
    range_errors,
)
from hotcache.checks._common import (
    setting as _setting,
)
from hotcache.conf import DEFAULTS, hotcache_settings


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
        errors.append(
            Error(
                f"{_setting('RATELIMIT_RULES')} is a {type(rules).__name__}, not a list.",
                hint="Set it to a list of rule dicts (see README, Rate limiting).",
                id="hotcache.E017",
            )
        )
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
        errors.append(
            Error(
                f"{_setting('RATELIMIT_DEFAULT_POLICY')}={policy!r} is not an outage policy.",
                hint="Use 'open', 'closed' or 'local' (default 'local').",
                id="hotcache.E014",
            )
        )
    missing = hotcache_settings.RATELIMIT_ON_MISSING_KEY
    if missing not in MISSING_KEY_CHOICES:
        errors.append(
            Error(
                f"{_setting('RATELIMIT_ON_MISSING_KEY')}={missing!r:.80} is not 'skip', 'shared' or 'deny'.",
                hint="It says what ratelimit/is_ratelimited/get_usage do when the key gives no "
                "identifier; default 'shared' (one bucket, as django-ratelimit).",
                id="hotcache.E014",
            )
        )
    proxies = hotcache_settings.TRUSTED_PROXIES
    if not isinstance(proxies, list | tuple):
        errors.append(
            Error(
                f"{_setting('TRUSTED_PROXIES')}={proxies!r} is not a list of CIDRs.",
                hint="Use a list such as ['10.0.0.0/8', '2001:db8::/32'] (default []).",
                id="hotcache.E016",
            )
        )
        proxies = []
    for cidr in proxies:
        if str(cidr).strip().lower() == UNIX_PEER:
            continue
        try:
            ipaddress.ip_network(str(cidr).strip(), strict=False)
        except ValueError:
            errors.append(
                Error(
                    f"{_setting('TRUSTED_PROXIES')} entry {cidr!r} is not an IP network.",
                    hint="Write each trusted proxy as a CIDR ('10.0.0.0/8') or an address, or 'unix' "
                    "for a proxy on a Unix socket.",
                    id="hotcache.E016",
                )
            )
    header = hotcache_settings.TRUSTED_PROXY_HEADER
    if str(header).lower() not in ("x-forwarded-for", "forwarded"):
        errors.append(
            Error(
                f"{_setting('TRUSTED_PROXY_HEADER')}={header!r} is not supported.",
                hint="Use 'x-forwarded-for' or 'forwarded' (RFC 7239): the header your proxies append.",
                id="hotcache.E016",
            )
        )
    errors += range_errors(
        "RATELIMIT_STATUS_CODE",
        400,
        599,
        "is not a 4xx/5xx status.",
        hint="Use 429 (default) or 403.",
        check_id="hotcache.E018",
    )
    for name, top in (("IPV6_PREFIX", 128), ("IPV4_PREFIX", 32)):
        hint = f"Use a whole number from 1 to {top} (default {DEFAULTS[name]})."
        errors += range_errors(name, 1, top, "is not a prefix length.", hint=hint, check_id="hotcache.E019")
    errors += number_setting_errors(("RATELIMIT_DENY_CACHE_SIZE",), integer=True, allow_zero=True)
    return errors


# Where RateLimitMiddleware (django-ratelimit's RatelimitMiddleware) can be named in MIDDLEWARE.
_OUR_MIDDLEWARE = (
    "hotcache.middleware.RateLimitMiddleware",
    "hotcache.ratelimit.middleware.RateLimitMiddleware",
    "hotcache.ratelimit.middleware.RatelimitMiddleware",
    "hotcache.ratelimit_middleware.RateLimitMiddleware",
)
_THEIR_MIDDLEWARE = "django_ratelimit.middleware.RatelimitMiddleware"


@register(Tags.compatibility)
def check_django_ratelimit_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E090: a django-ratelimit setting (top-level RATELIMIT_*) of the wrong type, or a path that does not import.

    W011: RATELIMIT_IP_META_KEY names a request header believed from every peer (TRUSTED_PROXIES empty).
    W012: RATELIMIT_IPV4_MASK / IPV6_MASK disagree with HOTCACHE's IPV4_PREFIX / IPV6_PREFIX (HOTCACHE wins).
    W013: RATELIMIT_USE_CACHE / RATELIMIT_CACHE_PREFIX are set: hotcache does not use them.
    W014: RATELIMIT_VIEW is set but no RateLimitMiddleware is installed, or django-ratelimit's middleware still is.
    """
    errors: list[CheckMessage] = []

    def error(name: str, problem: str, hint: str) -> None:
        errors.append(Error(f"{name}={getattr(settings, name)!r:.80} {problem}.", hint=hint, id="hotcache.E090"))

    def imported(name: str) -> Any:
        value = getattr(settings, name)
        if not isinstance(value, str):
            return value
        try:
            return import_string(value)
        except ImportError as exc:
            error(name, f"does not import ({exc})", "Give the dotted path of an importable object.")
            return _MISSING

    for name in ("RATELIMIT_ENABLE", "RATELIMIT_FAIL_OPEN"):
        if hasattr(settings, name) and not isinstance(getattr(settings, name), bool):
            error(name, "is not True or False", f"Set {name} to True or False.")
    for name in ("RATELIMIT_USE_CACHE", "RATELIMIT_CACHE_PREFIX"):
        if hasattr(settings, name) and not isinstance(getattr(settings, name), str):
            error(name, "is not a string", f"Set {name} to a string (hotcache does not use it; see W013).")
    for name, top in (("RATELIMIT_IPV4_MASK", 32), ("RATELIMIT_IPV6_MASK", 128)):
        value = getattr(settings, name, 0)
        if not (is_number(value, integer=True) and 0 <= value <= top):
            error(name, "is not a prefix length", f"Use a whole number from 0 to {top}.")
    if hasattr(settings, "RATELIMIT_VIEW"):
        view = getattr(settings, "RATELIMIT_VIEW", None)  # the project's settings, unknown to the stubs' plugin
        if not isinstance(view, str) or not view:
            error("RATELIMIT_VIEW", "is not a dotted path", "Give the dotted path of a view (request, exception).")
        elif (found := imported("RATELIMIT_VIEW")) is not _MISSING and not callable(found):
            error("RATELIMIT_VIEW", "is not callable", "Give the dotted path of a view (request, exception).")
    if getattr(settings, "RATELIMIT_HASH_ALGORITHM", None) is not None:
        found = imported("RATELIMIT_HASH_ALGORITHM")
        if found is not _MISSING and not callable(found):
            error(
                "RATELIMIT_HASH_ALGORITHM",
                "is not a hash constructor",
                "Use hashlib.sha256 (the default) or the dotted path of a hashlib-style constructor.",
            )
    if getattr(settings, "RATELIMIT_EXCEPTION_CLASS", None) is not None:
        found = imported("RATELIMIT_EXCEPTION_CLASS")
        if found is not _MISSING and not (isinstance(found, type) and issubclass(found, Exception)):
            error(
                "RATELIMIT_EXCEPTION_CLASS",
                "is not an exception class",
                "Give an Exception subclass or its dotted path (default hotcache.ratelimit.Ratelimited).",
            )
    meta_key = getattr(settings, "RATELIMIT_IP_META_KEY", None)
    if meta_key is not None:
        if isinstance(meta_key, str) and "." in meta_key:
            found = imported("RATELIMIT_IP_META_KEY")
            if found is not _MISSING and not callable(found):
                error("RATELIMIT_IP_META_KEY", "is not callable", "Give the dotted path of a function (request).")
        elif not callable(meta_key) and not (isinstance(meta_key, str) and meta_key):
            error(
                "RATELIMIT_IP_META_KEY",
                "is not a request.META key, a callable or a dotted path",
                "Use None (REMOTE_ADDR), a META key such as 'HTTP_X_REAL_IP', or a function (request) -> address.",
            )
        elif isinstance(meta_key, str) and meta_key.startswith("HTTP_") and not hotcache_settings.TRUSTED_PROXIES:
            errors.append(
                Warning(
                    f"RATELIMIT_IP_META_KEY={meta_key!r:.80} is a request header any client can send, and "
                    f"{_setting('TRUSTED_PROXIES')} is empty, so it is believed from every peer.",
                    hint="List your proxies in HOTCACHE['TRUSTED_PROXIES'] so the header is read only from them (or "
                    "make sure nothing reaches Django but through the proxy that sets it).",
                    id="hotcache.W011",
                )
            )
    raw = getattr(settings, "HOTCACHE", None)
    user = raw if isinstance(raw, dict) else {}
    for mask, prefix in (("RATELIMIT_IPV4_MASK", "IPV4_PREFIX"), ("RATELIMIT_IPV6_MASK", "IPV6_PREFIX")):
        if hasattr(settings, mask) and prefix in user and getattr(settings, mask) != user[prefix]:
            errors.append(
                Warning(
                    f"{mask}={getattr(settings, mask)!r:.40} and {_setting(prefix)}={user[prefix]!r:.40} disagree; "
                    f"hotcache uses {_setting(prefix)}.",
                    hint=f"Keep one of them ({prefix} in HOTCACHE is hotcache's own name for it).",
                    id="hotcache.W012",
                )
            )
    use_cache = getattr(settings, "RATELIMIT_USE_CACHE", None)
    if isinstance(use_cache, str) and use_cache != hotcache_settings.REDIS_ALIAS:
        errors.append(
            Warning(
                f"RATELIMIT_USE_CACHE={use_cache!r:.80} is not used: hotcache counts rate limits on the Redis of "
                f"{_setting('REDIS_ALIAS')} ({hotcache_settings.REDIS_ALIAS!r:.80}).",
                hint="Point HOTCACHE['REDIS_ALIAS'] at the cache you meant, or remove RATELIMIT_USE_CACHE.",
                id="hotcache.W013",
            )
        )
    if getattr(settings, "RATELIMIT_CACHE_PREFIX", "rl:") != "rl:":
        errors.append(
            Warning(
                "RATELIMIT_CACHE_PREFIX is not used: hotcache's keys start with HOTCACHE['KEY_PREFIX'].",
                hint="Set HOTCACHE['KEY_PREFIX'] to keep hotcache's keys apart, or remove RATELIMIT_CACHE_PREFIX.",
                id="hotcache.W013",
            )
        )
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    if _THEIR_MIDDLEWARE in middleware:
        errors.append(
            Warning(
                f"MIDDLEWARE names {_THEIR_MIDDLEWARE}: it ignores hotcache's Ratelimited.",
                hint="Replace it with hotcache.ratelimit.middleware.RatelimitMiddleware.",
                id="hotcache.W014",
            )
        )
    elif getattr(settings, "RATELIMIT_VIEW", None) and not any(m in middleware for m in _OUR_MIDDLEWARE):
        errors.append(
            Warning(
                "RATELIMIT_VIEW is set but MIDDLEWARE has no RateLimitMiddleware, so it is never called.",
                hint="Add hotcache.ratelimit.middleware.RatelimitMiddleware to MIDDLEWARE (toward the bottom).",
                id="hotcache.W014",
            )
        )
    return errors


_MISSING = object()
