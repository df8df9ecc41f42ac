"""django-ratelimit's core methods, ``get_usage`` and ``is_ratelimited`` (``django_ratelimit.core``), and its method
sentinels ``ALL`` / ``UNSAFE``, on hotcache's check (same signatures, same function attributes).

A key's value reaches Redis only as its digest (RATELIMIT_HASH_ALGORITHM, as django-ratelimit). A key with no
value is one shared bucket per group, as in django-ratelimit, unless RATELIMIT_ON_MISSING_KEY says ``skip``
or ``deny``. See docs/ratelimit.md ("Per view").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from hotcache import metering
from hotcache.conf import hotcache_settings
from hotcache.exceptions import InvalidName
from hotcache.ratelimit.acore import aevaluate
from hotcache.ratelimit.core import evaluate, refuse_missing
from hotcache.ratelimit.identifiers import MISSING_KEY_CHOICES, key_value
from hotcache.ratelimit.limits import Decision, Limit
from hotcache.ratelimit.options import compat_settings
from hotcache.ratelimit.outage import policy_of
from hotcache.ratelimit.rates import InvalidRate, parse_rate

__all__ = ["ALL", "UNSAFE", "aget_usage", "get_usage", "is_ratelimited"]

ALL = (None,)  # every HTTP method (django-ratelimit's sentinel)
UNSAFE = ["DELETE", "PATCH", "POST", "PUT"]


def _method_match(request: Any, method: Any) -> bool:
    if method == ALL or method is None:
        return True
    if not isinstance(method, list | tuple):
        method = [method]
    return request.method in [str(m).upper() for m in method]


def _group_of(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        fn = fn.func
    parts = []
    if hasattr(fn, "__module__"):
        parts.append(fn.__module__)
    if hasattr(fn, "__self__"):
        parts.append(fn.__self__.__class__.__name__)
    parts.append(getattr(fn, "__qualname__", type(fn).__qualname__))
    return ".".join(parts)


@functools.lru_cache(maxsize=4096)
def _digest(hash_fn: Callable[[bytes], Any], text: str) -> str:
    # Cached like the Redis key built from it: a returning client costs a dict lookup, not a hash.
    return str(hash_fn(text.encode("utf-8", "surrogatepass")).hexdigest()[:32])


def _on_missing_key() -> str:
    choice = hotcache_settings.RATELIMIT_ON_MISSING_KEY
    return choice if choice in MISSING_KEY_CHOICES else "shared"


def get_usage(
    request: Any,
    group: str | None = None,
    fn: Callable[..., Any] | None = None,
    key: Any = None,
    rate: Any = None,
    method: Any = ALL,
    increment: bool = False,
) -> dict[str, Any] | None:
    """django-ratelimit's get_usage: ``{count, limit, should_limit, time_left}`` (plus ``remaining``,
    ``retry_after``, ``decision``), or None when the method does not match or the rate is None."""
    asked = _ask(request, group, fn, key, rate, method, increment)
    if asked is None:
        return None
    lim, count, fail_open, refused = asked
    decision = refused if refused is not None else evaluate([lim], increment=increment)
    return _usage(decision, count, fail_open)


async def aget_usage(
    request: Any,
    group: str | None = None,
    fn: Callable[..., Any] | None = None,
    key: Any = None,
    rate: Any = None,
    method: Any = ALL,
    increment: bool = False,
) -> dict[str, Any] | None:
    """get_usage() for async code: the same answer, its round trip awaited on the event loop (no thread hop).

    A ``key`` that reads ``request.user`` needs it resolved first (``request.user = await request.auser()``),
    as @ratelimit does on an async view."""
    asked = _ask(request, group, fn, key, rate, method, increment)
    if asked is None:
        return None
    lim, count, fail_open, refused = asked
    decision = refused if refused is not None else await aevaluate([lim], increment=increment)
    return _usage(decision, count, fail_open)


def _ask(
    request: Any, group: str | None, fn: Any, key: Any, rate: Any, method: Any, increment: bool
) -> tuple[Limit, int, bool | None, Decision | None] | None:
    """get_usage's question as one Limit: (limit, count, RATELIMIT_FAIL_OPEN, the refusal of a missing key to
    deny, else None: Redis decides); None when nothing is to be checked (disabled, another method, no rate, a
    missing key to skip). One home for what get_usage and aget_usage ask; only their round trip differs."""
    if group is None and fn is None:
        raise ImproperlyConfigured("get_usage must be called with either `group` or `fn` arguments")
    compat = compat_settings()
    if not compat.enable:
        return None
    if not _method_match(request, method):
        return None
    if group is None:
        group = _group_of(fn)
    if callable(rate):
        rate = rate(group, request)
    elif isinstance(rate, str) and "." in rate:
        rate = import_string(rate)(group, request)
    if rate is None:
        return None
    try:
        count, period = parse_rate(rate)
    except InvalidRate as exc:
        raise ImproperlyConfigured(str(exc)) from exc
    if not key:
        raise ImproperlyConfigured("Ratelimit key must be specified")
    value = key_value(key, request, group)
    methods = (
        ""
        if method == ALL or method is None
        else "".join(sorted(str(m).upper() for m in (method if isinstance(method, list | tuple) else [method])))
    )
    # As django-ratelimit: a value (a username, an address) reaches Redis only as a digest, which covers the rate
    # too, so two stacked decorators of one view with different rates count apart; and by default a key with no
    # value (an anonymous 'user', no address) is one shared bucket (of the group and rate).
    ident = _digest(compat.hash, f"{count}/{period}|" + ("" if value is None else value))
    fail_open = compat.fail_open
    policy = policy_of(None) if fail_open is None else ("open" if fail_open else "closed")
    try:
        lim = Limit(f"{group}|{methods}" if methods else group, ident, count, period, policy, headers=True)
    except (InvalidName, InvalidRate) as exc:  # an odd group or method list
        raise ImproperlyConfigured(str(exc)) from exc
    choice = "shared" if value is not None else _on_missing_key()
    if value is None and increment:
        metering.event("ratelimit", f"missing_key:{lim.name}")
    if choice == "skip":
        return None  # not limited, as when the rate is None
    refused = refuse_missing([lim], [lim], increment=increment) if choice == "deny" else None
    return lim, count, fail_open, refused


def _usage(decision: Decision, count: int, fail_open: bool | None) -> dict[str, Any] | None:
    if fail_open and decision.degraded:
        return None  # RATELIMIT_FAIL_OPEN: as django-ratelimit, an outage means "not limited, not counted"
    res = decision.results[0]
    return {
        "count": res.count,
        "limit": count,
        "should_limit": not res.allowed,
        "time_left": res.retry_after if not res.allowed else max(1, math.ceil(res.reset)),
        "remaining": res.remaining,
        "retry_after": res.retry_after,
        "decision": decision,
    }


def is_ratelimited(
    request: Any,
    group: str | None = None,
    fn: Callable[..., Any] | None = None,
    key: Any = None,
    rate: Any = None,
    method: Any = ALL,
    increment: bool = False,
) -> bool:
    """django-ratelimit's is_ratelimited: ``get_usage``'s ``should_limit`` (False when it returns None)."""
    usage = get_usage(request, group, fn, key, rate, method, increment)
    return False if usage is None else bool(usage["should_limit"])


# django-ratelimit exposes the method sentinels on its functions too (``is_ratelimited.UNSAFE``).
is_ratelimited.ALL = ALL  # type: ignore[attr-defined]
is_ratelimited.UNSAFE = UNSAFE  # type: ignore[attr-defined]
get_usage.ALL = ALL  # type: ignore[attr-defined]
get_usage.UNSAFE = UNSAFE  # type: ignore[attr-defined]
