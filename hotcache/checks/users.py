"""System checks for cached users (E020-E029, W020-W029). Each message names the setting and the fix."""

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
from hotcache.conf import hotcache_settings

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
