"""System checks for rate limiting (E010-E019, W010-W019). Each message names the setting and the fix."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from hotcache.checks._common import (
    number_setting_errors,
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
