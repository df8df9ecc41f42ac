"""Sessions: one warm authenticated request (SessionMiddleware + an authentication middleware + request.user)
with Django's ``db`` sessions + AuthenticationMiddleware, Django's ``cached_db`` sessions on django-redis +
AuthenticationMiddleware, and ``hotcache.sessions`` + CachedAuthenticationMiddleware. Extra columns: database
queries per request (all, and on the session table). django-redis' own commands (``cached_db``'s cache GET)
are not hotcache's and are not in the Redis columns: that arm's note says so. Run it on PostgreSQL with
``DJANGO_SETTINGS_MODULE=config.settings.bench_postgres``."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from config.demo.bench.runner import Arm
from hotcache import users

__all__ = ["arms"]

_ENGINES = {
    "db": "django.contrib.sessions.backends.db",
    "cached_db": "django.contrib.sessions.backends.cached_db",
    "hotcache": "hotcache.sessions",
}


class _QueryCounter:
    def __init__(self) -> None:
        self.total = 0
        self.session = 0

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        self.total += 1
        if '"django_session"' in sql:
            self.session += 1
        return execute(sql, params, many, context)

    def counts(self) -> dict[str, int]:
        return {"db_queries": self.total, "session_queries": self.session}


def _view(request: HttpRequest) -> HttpResponse:
    user = request.user
    assert user.is_authenticated, "bench session lost its user"
    return HttpResponse(user.get_username())


def _bare_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hotcache-bench-sessions")


def arms() -> dict[str, list[Arm]]:
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    model = get_user_model()
    user, _ = model._default_manager.get_or_create(**{model.USERNAME_FIELD: "hotcache-bench-sessions"})
    user.set_password("bench-pw")
    user.save()
    factory = RequestFactory()
    counter = _QueryCounter()
    connection.execute_wrappers.append(counter)
    stores: list[Any] = []

    def stack(engine: str, auth_mw: type) -> Callable[[int], Any]:
        store_class = import_module(_ENGINES[engine]).SessionStore
        session = store_class()
        session[SESSION_KEY] = user._meta.pk.value_to_string(user)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        stores.append(session)
        handler = SessionMiddleware(auth_mw(_view))
        handler.SessionStore = store_class  # SessionMiddleware reads SESSION_ENGINE once, in __init__
        cookie = f"{settings.SESSION_COOKIE_NAME}={session.session_key}"

        def op(i: int) -> Any:
            return handler(factory.get("/", HTTP_COOKIE=cookie))

        return op

    def teardown() -> None:
        if counter in connection.execute_wrappers:
            connection.execute_wrappers.remove(counter)
        for session in stores:
            session.delete()
        users.invalidate_user(user.pk)

    def bare(i: int) -> Any:
        return _bare_view(factory.get("/"))

    vendor = connection.vendor
    return {
        f"sessions: warm authenticated request, {vendor} (session + auth middleware + request.user)": [
            Arm("bare view (no middleware), the baseline", bare, counts=counter.counts),
            Arm(
                "django db sessions + AuthenticationMiddleware",
                stack("db", AuthenticationMiddleware),
                counts=counter.counts,
            ),
            Arm(
                "django cached_db (django-redis) + AuthenticationMiddleware",
                stack("cached_db", AuthenticationMiddleware),
                counts=counter.counts,
                note="+1 django-redis GET per request (not metered by hotcache)",
            ),
            Arm(
                "hotcache.sessions + CachedAuthenticationMiddleware (warm)",
                stack("hotcache", users.CachedAuthenticationMiddleware),
                counts=counter.counts,
                teardown=teardown,
            ),
        ]
    }
