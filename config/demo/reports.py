"""Demo scenario for the usage reports: a staff user opens the admin report pages now and then, through the
full middleware stack, and the demo's report shows what the overview costs and what it says. The day's Redis
command count is not repeated here: the report prints it once, read after the run's last meter flush."""

from __future__ import annotations

from config.demo.runner import DemoContext, DemoRequest, DemoResponse, Figure, Scenario
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


def _report(ctx: DemoContext) -> list[Figure]:
    metering.flush()  # so a meter flush falling due does not count as the overview's cost
    with count_redis() as cost:
        ov = reports.overview()
    pages = {str(k): v for k, v in sorted(ctx.data["reports"]["statuses"].items())}
    server = ov.mongo.server_limit
    return [
        Figure(
            "report_pages",
            "Report pages opened",
            pages,
            "requests",
            "admin report pages a staff user opened through the middleware stack, by HTTP status (all 200)",
            text=", ".join(f"{k} x{v:,}" for k, v in pages.items()) or "none",
        ),
        Figure(
            "overview_redis_commands",
            "Overview: Redis commands",
            cost.commands,
            "commands",
            "what building the overview page costs in Redis (it never grows with traffic)",
        ),
        Figure(
            "overview_round_trips",
            "Overview: Redis round trips",
            cost.round_trips,
            "round trips",
            "the same, in round trips",
        ),
        Figure(
            "redis_memory",
            "Redis memory",
            "unknown" if ov.memory.value is None else f"{ov.memory.percent}% of REDIS_MEMORY_LIMIT",
            "",
            "INFO used_memory against REDIS_MEMORY_LIMIT; unknown where the server has no INFO (fakeredis)",
        ),
        Figure(
            "mongo_server_connections",
            "MongoDB connections",
            "unknown" if server.value is None else f"{server.value} of {server.limit} ({server.percent}%)",
            "",
            "open connections against MONGO_SERVER_CONNECTION_LIMIT; unknown where the server has no "
            "serverStatus (the in-process stand-in)",
        ),
        Figure("redis_available", "Redis available", ov.redis_available, "", "whether the overview could read Redis"),
        Figure(
            "exceeded",
            "Limits exceeded",
            [f"{lim.name} ({lim.setting})" for lim in ov.exceeded],  # names only: the headline has the figures
            "",
            "budgets and limits the overview reports as exceeded, by name and setting (their figures are in the "
            "headline). The demo sends many users' traffic in seconds, so the daily budget can be over",
        ),
    ]


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
