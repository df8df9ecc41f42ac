"""The demo's scenarios, one per feature. A feature adds its own module and one line in all_scenarios()."""

from __future__ import annotations

from hotcache.demo.runner import DemoContext, DemoRequest, Scenario

__all__ = ["all_scenarios", "pages"]


def _page_view(ctx: DemoContext, i: int) -> DemoRequest:
    # Anonymous visitors from a pool of IPs, some busier than others.
    ip = f"198.51.100.{min(254, int(ctx.rng.paretovariate(1.2)))}"
    return DemoRequest("GET", "/", headers={"REMOTE_ADDR": ip})


def pages() -> Scenario:
    return Scenario(name="pages", make_request=_page_view, weight=1.0)


def all_scenarios() -> list[Scenario]:
    scenarios = [pages()]
    # --- Rate limiting (issue 3) ---
    # --- Cached users (issue 4) ---
    # --- MFA codes (issue 5) ---
    # --- API keys (issue 6) ---
    # --- Workbench (issue 7) ---
    # --- Analytics (issue 8) ---
    scenarios.append(__import__("hotcache.demo.analytics", fromlist=["scenario"]).scenario())
    return scenarios
