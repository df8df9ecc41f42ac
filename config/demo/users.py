"""Cached users in the demo: logged-in users browsing with session cookies; some rename themselves mid-run
and one account is deactivated. The report shows user-cache hits (database queries avoided), the user
queries actually made, and that no response ever showed a stale name or a revoked login."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection

from config.demo.runner import DemoContext, DemoRequest, DemoResponse, Figure, Scenario
from hotcache import metering

__all__ = ["scenario"]

NAME = "users"
_USERS = 25
_PREFIX = "demo-user-"
_DJANGO_AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"


class _UserQueries:
    def __init__(self) -> None:
        self.n = 0
        self.table = f'"{get_user_model()._meta.db_table}"'

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if self.table in sql and sql.lstrip().upper().startswith("SELECT"):
            self.n += 1
        return execute(sql, params, many, context)


def _setup(ctx: DemoContext) -> None:
    model = get_user_model()
    model._default_manager.filter(username__startswith=_PREFIX).delete()
    state: dict[str, Any] = ctx.data[NAME]
    state["users"] = []
    for n in range(_USERS):
        user = model._default_manager.create_user(
            username=f"{_PREFIX}{n}", password=secrets.token_urlsafe(), first_name=f"v0-{n}"
        )
        session = SessionStore()
        session[SESSION_KEY] = user._meta.pk.value_to_string(user)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        state["users"].append({"pk": user.pk, "cookie": session.session_key, "name": f"v0-{n}", "active": True})
    state.update(renames=0, deactivated=0, stale=0, wrong_auth=0, ok=0)
    state["events_before"] = metering.snapshot()
    counter = _UserQueries()
    connection.execute_wrappers.append(counter)
    state["counter"] = counter


def _make_request(ctx: DemoContext, i: int) -> DemoRequest:
    state = ctx.data[NAME]
    # A few users are much busier than the rest.
    idx = min(_USERS - 1, int(ctx.rng.paretovariate(1.1)) - 1)
    who = state["users"][idx]
    headers = {"HTTP_COOKIE": f"sessionid={who['cookie']}"}
    if state["deactivated"] == 0 and i >= ctx.total_requests // 2 and state["users"][1]["active"]:
        # Halfway through, the second-busiest account is closed (from its own session).
        closing = {"HTTP_COOKIE": f"sessionid={state['users'][1]['cookie']}"}
        return DemoRequest("POST", "/users/deactivate/", headers=closing, tag="1")
    if ctx.rng.random() < 0.03:
        return DemoRequest("POST", "/users/rename/", headers=headers, tag=str(idx))
    return DemoRequest("GET", "/users/me/", headers=headers, tag=str(idx))


def _on_response(ctx: DemoContext, req: DemoRequest, resp: DemoResponse) -> None:
    import json

    state = ctx.data[NAME]
    who = state["users"][int(req.tag)]
    if req.path == "/users/rename/" and resp.status == 200:
        who["name"] = json.loads(resp.body)["first_name"]
        state["renames"] += 1
        return
    if req.path == "/users/deactivate/" and resp.status == 200:
        who["active"] = False
        state["deactivated"] += 1
        return
    if req.path != "/users/me/":
        return
    if who["active"] != (resp.status == 200):
        state["wrong_auth"] += 1
    elif resp.status == 200:
        state["ok"] += 1
        if json.loads(resp.body)["first_name"] != who["name"]:
            state["stale"] += 1


def _report(ctx: DemoContext) -> list[Figure]:
    state = ctx.data[NAME]
    counter: _UserQueries = state["counter"]
    if counter in connection.execute_wrappers:
        connection.execute_wrappers.remove(counter)
    delta = metering.snapshot()
    delta.subtract(state["events_before"])
    return [
        Figure(
            "logged_in_users",
            "Logged-in users",
            _USERS,
            "users",
            "accounts with a session, created in the demo's throwaway database",
        ),
        Figure(
            "authenticated_views",
            "Authenticated page views",
            state["ok"],
            "requests",
            "GET /users/me/ answered 200 for an active account",
        ),
        Figure(
            "cache_hits",
            "User-cache hits",
            delta["ev:users:hit"],
            "lookups",
            "request.user served from Redis: each is a user-table query the database did not run",
        ),
        Figure(
            "cache_misses",
            "User-cache misses",
            delta["ev:users:miss"],
            "lookups",
            "user loaded from the database, then cached",
        ),
        Figure(
            "fallbacks",
            "Fallbacks to the database",
            delta["ev:users:fallback"],
            "lookups",
            "Redis unavailable: the user was loaded from the database",
        ),
        Figure(
            "invalidations",
            "Invalidations",
            delta["ev:users:invalidated"],
            "entries",
            "cache entries dropped because the user was saved or deactivated",
        ),
        Figure(
            "user_selects",
            "User-table SELECTs made",
            counter.n,
            "queries",
            "SELECTs on the user table the database actually ran (misses, saves, sessions)",
        ),
        Figure(
            "renames",
            "Renames mid-run",
            state["renames"],
            "requests",
            "users who changed their first name while browsing (the next page must show the new name)",
        ),
        Figure(
            "deactivated",
            "Accounts deactivated",
            state["deactivated"],
            "accounts",
            "an account closed halfway through (its session must stop working at once)",
        ),
        Figure(
            "stale_names",
            "Responses with a stale name",
            state["stale"],
            "responses",
            "a page showing a first name older than the last rename: must be 0",
        ),
        Figure(
            "wrong_login_state",
            "Responses with the wrong login state",
            state["wrong_auth"],
            "responses",
            "a closed account served, or an active one refused: must be 0",
        ),
    ]


def _verify(ctx: DemoContext) -> list[str]:
    state = ctx.data[NAME]
    problems = []
    if state["stale"]:
        problems.append(f"{state['stale']} response(s) showed a stale first name after a rename")
    if state["wrong_auth"]:
        problems.append(f"{state['wrong_auth']} response(s) had the wrong login state")
    return problems


def scenario() -> Scenario:
    return Scenario(
        name=NAME,
        make_request=_make_request,
        expected_statuses=frozenset({200, 401}),  # 401: the deactivated account's requests after it closed
        weight=2.0,
        replaces_middleware={_DJANGO_AUTH: "hotcache.middleware.CachedAuthenticationMiddleware"},
        setup=_setup,
        on_response=_on_response,
        report=_report,
        verify=_verify,
    )
