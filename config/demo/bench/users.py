"""Cached users: one authenticated request through SessionMiddleware + Django's AuthenticationMiddleware vs
hotcache's CachedAuthenticationMiddleware. Extra columns: database queries per request (all, and on the
user table); the session load is a query in both arms (database sessions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.middleware import SessionMiddleware
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from config.demo.bench.runner import Arm
from hotcache import users

__all__ = ["arms", "signed_in"]


class _QueryCounter:
    def __init__(self) -> None:
        self.total = 0
        self.user = 0
        self.table = get_user_model()._meta.db_table

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        self.total += 1
        if f'"{self.table}"' in sql:
            self.user += 1
        return execute(sql, params, many, context)

    def counts(self) -> dict[str, int]:
        return {"db_queries": self.total, "user_queries": self.user}


def signed_in(username: str, store: Callable[[], SessionBase]) -> tuple[Any, SessionBase]:
    """The bench user ``username`` (created on first use) and a saved ``store()`` session signed in as it, as
    django.contrib.auth.login leaves one: the users group and the async group's cached-user arms start alike."""
    model = get_user_model()
    user, _ = model._default_manager.get_or_create(**{model.USERNAME_FIELD: username})
    user.set_password("bench-pw")
    user.save()
    session = store()
    session[SESSION_KEY] = user._meta.pk.value_to_string(user)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return user, session


def _view(request: HttpRequest) -> HttpResponse:
    user = request.user
    assert user.is_authenticated, "bench session lost its user"
    return HttpResponse(user.get_username())


def arms() -> dict[str, list[Arm]]:
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    user, session = signed_in("hotcache-bench", SessionStore)
    factory = RequestFactory()
    counter = _QueryCounter()
    connection.execute_wrappers.append(counter)

    def stack(auth_mw: type) -> Callable[[int], Any]:
        handler = SessionMiddleware(auth_mw(_view))

        def op(i: int) -> Any:
            request = factory.get("/", HTTP_COOKIE=f"sessionid={session.session_key}")
            return handler(request)

        return op

    def teardown() -> None:
        if counter in connection.execute_wrappers:
            connection.execute_wrappers.remove(counter)
        users.invalidate_user(user.pk)

    return {
        "users: authenticated request (session + auth middleware + request.user)": [
            Arm("django AuthenticationMiddleware", stack(AuthenticationMiddleware), counts=counter.counts),
            Arm(
                "hotcache CachedAuthenticationMiddleware (warm)",
                stack(users.CachedAuthenticationMiddleware),
                counts=counter.counts,
                teardown=teardown,
            ),
        ]
    }
