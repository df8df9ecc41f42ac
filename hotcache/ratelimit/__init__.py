"""Rate limiting: a sliding-window counter on Redis, every rule of a request in one atomic round trip.

The public API: ``RateLimitMiddleware`` (global rules, ``hotcache.middleware``), the django-ratelimit drop-in
(``ratelimit``, ``is_ratelimited``, ``get_usage``, ``ALL``, ``UNSAFE``, ``Ratelimited``, and its settings; the
middleware as ``hotcache.ratelimit.middleware.RatelimitMiddleware``) and the core
(``evaluate`` of ``Limit`` s into a ``Decision``). How it works, what it costs and how it fails: docs/ratelimit.md.
"""

from __future__ import annotations

from hotcache.ratelimit.acore import aevaluate
from hotcache.ratelimit.core import evaluate, limit_keys, refuse_missing
from hotcache.ratelimit.decorators import ratelimit
from hotcache.ratelimit.exceptions import Ratelimited
from hotcache.ratelimit.identifiers import MISSING_KEY_CHOICES, default_on_missing_key, key_value
from hotcache.ratelimit.limits import Decision, Limit, RuleResult
from hotcache.ratelimit.outage import POLICIES
from hotcache.ratelimit.rates import InvalidRate, parse_rate
from hotcache.ratelimit.state import reset_local_state
from hotcache.ratelimit.usage import ALL, UNSAFE, aget_usage, get_usage, is_ratelimited

__all__ = [
    "ALL",
    "MISSING_KEY_CHOICES",
    "POLICIES",
    "UNSAFE",
    "Decision",
    "InvalidRate",
    "Limit",
    "Ratelimited",
    "RuleResult",
    "aevaluate",
    "aget_usage",
    "default_on_missing_key",
    "evaluate",
    "get_usage",
    "is_ratelimited",
    "key_value",
    "limit_keys",
    "parse_rate",
    "ratelimit",
    "refuse_missing",
    "reset_local_state",
]

# Importable from here before the package existed, though not in __all__.
from hotcache.ratelimit.identifiers import ACCESSOR_KEYS, ADDRESS_KEYS, SHARED_IDENTIFIER, SIMPLE_KEYS  # noqa: F401
from hotcache.ratelimit.limits import MAX_IDENTIFIER, MAX_NAME  # noqa: F401
from hotcache.ratelimit.options import settings_snapshot  # noqa: F401
