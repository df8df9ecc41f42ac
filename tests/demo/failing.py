"""Scenarios that must fail a demo run, for ``manage.py hotcache_demo --scenarios tests.demo.failing.scenarios``.

The demo's own page views, plus a client that sends a Host header outside ALLOWED_HOSTS (Django answers 400
DisallowedHost), a scenario whose expected outcome never happens (its verify() says so) and one whose set-up
logs an error under hotcache's logger.
"""

from __future__ import annotations

import logging

from config.demo.runner import DemoContext, DemoRequest, Scenario
from config.demo.scenarios import pages

__all__ = ["scenarios"]

NEVER_HAPPENED = "the expected outcome did not happen (tests.demo.failing)"
LOGGED_ERROR = "hotcache: something went wrong (tests.demo.failing)"


def _foreign_host(ctx: DemoContext, i: int) -> DemoRequest:
    return DemoRequest("GET", "/", headers={"HTTP_HOST": "evil.example", "REMOTE_ADDR": "192.0.2.1"})


def _expects_the_impossible(ctx: DemoContext) -> list[str]:
    return [NEVER_HAPPENED]


def _log_an_error(ctx: DemoContext) -> None:
    logging.getLogger("hotcache.tests").error(LOGGED_ERROR)


def scenarios() -> list[Scenario]:
    return [
        pages(),
        Scenario(name="foreign-host", make_request=_foreign_host, weight=0.0, every=10),
        Scenario(name="unmet", make_request=pages().make_request, weight=0.0, every=25, verify=_expects_the_impossible),
        Scenario(name="logs-an-error", make_request=pages().make_request, weight=0.0, setup=_log_an_error),
    ]
