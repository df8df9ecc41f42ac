"""System check for the order of hotcache's middleware in MIDDLEWARE: E022 (cached users) and W015 (rate limiting).

Each middleware reads what an earlier one set on the request: CachedAuthenticationMiddleware needs
``request.session`` (SessionMiddleware), and a rate-limit rule keyed on the user needs ``request.user`` /
``request.auser`` (an authentication middleware). Entries are compared by class (subclasses count), so a
project's own SessionMiddleware subclass is recognised.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

__all__ = ["check_middleware_order"]


def _classes(paths: list[str]) -> list[type | None]:
    out: list[type | None] = []
    for path in paths:
        try:
            found = import_string(path)
        except ImportError:
            found = None  # Django's own handler reports it
        out.append(found if isinstance(found, type) else None)
    return out


def _first(classes: list[type | None], base: type) -> int | None:
    return next((i for i, c in enumerate(classes) if c is not None and issubclass(c, base)), None)


@register(Tags.compatibility)
def check_middleware_order(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E022: CachedAuthenticationMiddleware without SessionMiddleware before it (every request would fail).
    W015: RateLimitMiddleware before any authentication middleware while a rule keys on the user."""
    paths = [p for p in (getattr(settings, "MIDDLEWARE", None) or []) if isinstance(p, str)]
    if not any(p.startswith("hotcache.") for p in paths):
        return []
    from django.contrib.auth.middleware import AuthenticationMiddleware

    from hotcache.ratelimit.middleware import RateLimitMiddleware
    from hotcache.users.middleware import CachedAuthenticationMiddleware

    classes = _classes(paths)
    messages: list[CheckMessage] = []
    cached = _first(classes, CachedAuthenticationMiddleware)
    try:
        from django.contrib.sessions.middleware import SessionMiddleware
    except ImportError:  # pragma: no cover - django.contrib.sessions ships with Django
        session = None
    else:
        session = _first(classes, SessionMiddleware)
    if cached is not None and (session is None or session > cached):
        messages.append(
            Error(
                f"MIDDLEWARE has {paths[cached]!r} "
                + ("without SessionMiddleware" if session is None else "before SessionMiddleware")
                + ": it reads request.session, so every request would fail.",
                hint="Put 'django.contrib.sessions.middleware.SessionMiddleware' before it in MIDDLEWARE.",
                id="hotcache.E022",
            )
        )
    limiter = _first(classes, RateLimitMiddleware)
    if limiter is not None:
        auth = _first(classes, AuthenticationMiddleware)
        if (auth is None or auth > limiter) and _user_rules():
            messages.append(
                Warning(
                    f"MIDDLEWARE has {paths[limiter]!r} "
                    + ("but no authentication middleware" if auth is None else "before the authentication middleware")
                    + f", while HOTCACHE['RATELIMIT_RULES'] keys {', '.join(_user_rules())} on the user: they see "
                    "no user, so every request counts as anonymous.",
                    hint="Put 'hotcache.middleware.CachedAuthenticationMiddleware' (or Django's "
                    "AuthenticationMiddleware) before the rate-limit middleware.",
                    id="hotcache.W015",
                )
            )
    return messages


def _user_rules() -> list[str]:
    """Names of the configured rules keyed on the user (none when the rules do not compile: E010-E019 say why)."""
    try:
        from hotcache.ratelimit.rules import compiled_rules

        return [r.name for r in compiled_rules() if r.needs_user]
    except Exception:
        return []
