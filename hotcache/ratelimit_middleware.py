"""The old import path of the rate-limit middleware and its rule helpers; they live in ``hotcache.ratelimit``
(``middleware``, ``rules``, ``headers``). Import ``RateLimitMiddleware`` from ``hotcache.middleware``."""

from __future__ import annotations

from hotcache.ratelimit.headers import add_headers  # noqa: F401 - importable from here before, not in __all__
from hotcache.ratelimit.middleware import RateLimitMiddleware, check_request
from hotcache.ratelimit.rules import NAME_PATTERN, RULE_FIELDS, CompiledRule, compiled_rules, rule_errors, rule_warnings

__all__ = ["NAME_PATTERN", "RULE_FIELDS", "CompiledRule", "RateLimitMiddleware", "check_request",
           "compiled_rules", "rule_errors", "rule_warnings"]
