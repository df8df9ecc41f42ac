"""Demo scenario for the usage reports: a staff user opens the admin report pages now and then, through the
full middleware stack, and the demo's report ends with the overview figures (as hotcache_status prints them)."""

from __future__ import annotations

from typing import Any

from config.demo.runner import DemoContext, DemoRequest, DemoResponse, Scenario
from hotcache import metering, reports
from hotcache.conf import FEATURES
from hotcache.testing import count_redis

__all__ = ["scenario"]

_STAFF = "hotcache-demo-staff"


def _setup(ctx: DemoContext) -> None:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(username=_STAFF, defaults={"is_staff": True})
    if not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    ctx.data["reports"].update(cookie=f"sessionid={session.session_key}", statuses={}, pages=0)


def _request(ctx: DemoContext, i: int) -> DemoRequest:
    pages = ["", *(f"{f}/" for f in FEATURES)]
    page = pages[i % len(pages)]
    return DemoRequest("GET", f"/hotcache/reports/{page}", headers={"HTTP_COOKIE": ctx.data["reports"]["cookie"]})


def _on_response(ctx: DemoContext, req: DemoRequest, resp: DemoResponse) -> None:
    statuses = ctx.data["reports"]["statuses"]
    statuses[resp.status] = statuses.get(resp.status, 0) + 1


def _report(ctx: DemoContext) -> dict[str, Any]:
    metering.flush()  # so a meter flush falling due does not count as the overview's cost
    with count_redis() as cost:
        ov = reports.overview()
    return {
        "report_pages": dict(sorted(ctx.data["reports"]["statuses"].items())),
        "overview_redis_commands": cost.commands,
        "overview_round_trips": cost.round_trips,
        "commands_today": f"{ov.commands_today.value:,} of {ov.commands_today.limit:,} ({ov.commands_today.percent}%)",
        "redis_memory": "unknown" if ov.memory.value is None else f"{ov.memory.percent}% of REDIS_MEMORY_LIMIT",
        "mongo_server_connections": (
            "unknown"
            if ov.mongo.server_limit.value is None
            else f"{ov.mongo.server_limit.value} of {ov.mongo.server_limit.limit} ({ov.mongo.server_limit.percent}%)"
        ),
        "redis_available": ov.redis_available,
        "exceeded": [lim.message() for lim in ov.exceeded],
    }


def scenario() -> Scenario:
    return Scenario(
        name="reports",
        make_request=_request,
        weight=0.0,
        every=100,  # a staff member glances at the reports now and then, whatever the traffic mix
        setup=_setup,
        on_response=_on_response,
        report=_report,
    )
