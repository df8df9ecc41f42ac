"""System checks for sessions (E110-E119, W110-W119). Each message names the setting and the fix."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from hotcache.checks._common import setting as _setting
from hotcache.conf import hotcache_settings

__all__ = ["ENGINES", "check_sessions"]

ENGINES = ("hotcache.sessions", "hotcache.sessions.store")  # what SESSION_ENGINE may name for hotcache's store


@register(Tags.compatibility)
def check_sessions(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    engine = getattr(settings, "SESSION_ENGINE", "")
    if engine not in ENGINES:
        return []
    errors: list[CheckMessage] = []
    if "django.contrib.sessions" not in settings.INSTALLED_APPS:
        errors.append(
            Error(
                f"SESSION_ENGINE={engine!r} keeps every session in the database (django_session) as well as in "
                "Redis, but 'django.contrib.sessions' is not in INSTALLED_APPS.",
                hint="Add 'django.contrib.sessions' to INSTALLED_APPS and run migrate.",
                id="hotcache.E110",
            )
        )
    if not hotcache_settings.enabled("sessions"):
        errors.append(
            Warning(
                f"SESSION_ENGINE={engine!r} but {_setting('FEATURES')} does not enable 'sessions': every session is "
                "read from the database, as with Django's 'db' engine.",
                hint="Add 'sessions' to HOTCACHE['FEATURES'] (or use None for all features), or set SESSION_ENGINE "
                "to 'django.contrib.sessions.backends.db'.",
                id="hotcache.W110",
            )
        )
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    if "django.contrib.sessions.middleware.SessionMiddleware" not in middleware and not any(
        m.endswith("SessionMiddleware") for m in middleware
    ):
        errors.append(
            Warning(
                f"SESSION_ENGINE={engine!r} but MIDDLEWARE has no SessionMiddleware: no request has a session.",
                hint="Add 'django.contrib.sessions.middleware.SessionMiddleware' to MIDDLEWARE.",
                id="hotcache.W111",
            )
        )
    return errors
