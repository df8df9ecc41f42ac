"""django-ratelimit's ``@ratelimit`` decorator (same arguments, same ``request.limited``, same ``ratelimit.ALL`` /
``ratelimit.UNSAFE``) for sync and async views. The decision is ``get_usage``'s; it raises ``Ratelimited``
(or RATELIMIT_EXCEPTION_CLASS). See docs/ratelimit.md ("Per view").
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from inspect import iscoroutinefunction
from typing import Any

from django.conf import settings as django_settings
from django.utils.module_loading import import_string

from hotcache.ratelimit.exceptions import Ratelimited
from hotcache.ratelimit.usage import ALL, UNSAFE, aget_usage, get_usage

__all__ = ["Ratelimited", "ratelimit"]


def _exception(usage: dict[str, Any] | None) -> Exception:
    cls: Any = getattr(django_settings, "RATELIMIT_EXCEPTION_CLASS", Ratelimited)
    if isinstance(cls, str):
        cls = import_string(cls)
    if isinstance(cls, type) and issubclass(cls, Ratelimited):
        return cls(retry_after=usage["retry_after"], decision=usage["decision"]) if usage else cls()
    exception: Exception = cls()
    return exception


def ratelimit(
    group: str | None = None, key: Any = None, rate: Any = None, method: Any = ALL, block: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """django-ratelimit's decorator (same arguments, same ``request.limited``), for sync and async views."""

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        uses_user = key in ("user", "user_or_ip") or callable(key) or (isinstance(key, str) and "." in key)

        if iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def _awrapped(request: Any, *args: Any, **kw: Any) -> Any:
                if uses_user and hasattr(request, "auser"):
                    request.user = await request.auser()  # resolved on the event loop, before the key reads it
                old_limited = getattr(request, "limited", False)
                usage = await aget_usage(request, group, fn, key, rate, method, True)  # no thread hop
                limited = bool(usage and usage["should_limit"])
                request.limited = limited or old_limited
                if limited and block:
                    raise _exception(usage)
                return await fn(request, *args, **kw)

            return _awrapped

        @functools.wraps(fn)
        def _wrapped(request: Any, *args: Any, **kw: Any) -> Any:
            old_limited = getattr(request, "limited", False)
            usage = get_usage(request, group, fn, key, rate, method, True)
            limited = bool(usage and usage["should_limit"])
            request.limited = limited or old_limited
            if limited and block:
                raise _exception(usage)
            return fn(request, *args, **kw)

        return _wrapped

    return decorator


ratelimit.ALL = ALL  # type: ignore[attr-defined]
ratelimit.UNSAFE = UNSAFE  # type: ignore[attr-defined]
