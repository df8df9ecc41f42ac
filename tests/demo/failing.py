"""Scenarios that must fail a demo run, for ``manage.py hotcache_demo --scenarios tests.demo.failing.scenarios``.

The demo's own page views, plus a client that sends a Host header outside ALLOWED_HOSTS (Django answers 400
DisallowedHost) and a scenario whose expected outcome never happens (its verify() says so).
"""

from __future__ import annotations

from config.demo.runner import DemoContext, DemoRequest, Scenario
from config.demo.scenarios import pages

__all__ = ["scenarios"]

NEVER_HAPPENED = "the expected outcome did not happen (tests.demo.failing)"


def _foreign_host(ctx: DemoContext, i: int) -> DemoRequest:
    return DemoRequest("GET", "/", headers={"HTTP_HOST": "evil.example", "REMOTE_ADDR": "192.0.2.1"})


def _expects_the_impossible(ctx: DemoContext) -> list[str]:
    return [NEVER_HAPPENED]


def scenarios() -> list[Scenario]:
    return [
        pages(),
        Scenario(name="foreign-host", make_request=_foreign_host, weight=0.0, every=10),
        Scenario(name="unmet", make_request=pages().make_request, weight=0.0, every=25, verify=_expects_the_impossible),
    ]
