"""The demo's scenarios: anonymous page views here, and one module per feature (config/demo/<feature>.py)."""

from __future__ import annotations

from config.demo import analytics, apikeys, mfa, ratelimit, reports, users, workbench
from config.demo.runner import DemoContext, DemoRequest, Scenario

__all__ = ["all_scenarios", "pages"]


def _page_view(ctx: DemoContext, i: int) -> DemoRequest:
    # Anonymous visitors from a pool of IPs, some busier than others.
    ip = f"198.51.100.{min(254, int(ctx.rng.paretovariate(1.2)))}"
    return DemoRequest("GET", "/", headers={"REMOTE_ADDR": ip})


def pages() -> Scenario:
    return Scenario(name="pages", make_request=_page_view, weight=1.0)


def all_scenarios() -> list[Scenario]:
    return [
        pages(),
        ratelimit.scenario(),
        users.scenario(),
        mfa.mfa_logins(),
        apikeys.scenario(),
        workbench.scenario(),
        analytics.scenario(),
        reports.scenario(),
    ]
