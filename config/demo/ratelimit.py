"""Rate limiting in the demo: API clients and login attempts through RateLimitMiddleware; a few abusers
exceed their limits. The report shows allowed/denied per rule (from the metering events) and 429s."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from config.demo.runner import DemoContext, DemoRequest, DemoResponse, Scenario
from hotcache import metering

__all__ = ["scenario"]

_RULES = [
    {"name": "demo-login-burst", "rate": "5/10s", "key": "ip", "path": "/rl/login/", "methods": ["POST"],
     "policy": "closed", "headers": True},
    {"name": "demo-api-per-ip", "rate": "30/m", "key": "ip", "path": "/rl/api/", "headers": True},
    {"name": "demo-api-per-key", "rate": "60/m", "key": "header:x-client", "path": "/rl/api/", "headers": True},
]


def _make(ctx: DemoContext, i: int) -> DemoRequest:
    rng = ctx.rng
    roll = rng.random()
    if roll < 0.25:
        # login attempts: mostly distinct visitors, one credential-stuffing IP
        ip = "203.0.113.66" if rng.random() < 0.5 else f"203.0.113.{rng.randint(1, 60)}"
        return DemoRequest("POST", "/rl/login/", headers={"REMOTE_ADDR": ip}, tag="login")
    # API calls: a scraper with one key rotating over five IPs, otherwise ordinary clients with their own keys
    if rng.random() < 0.35:
        ip = f"198.51.100.{rng.randint(200, 204)}"
        return DemoRequest("GET", "/rl/api/", headers={"REMOTE_ADDR": ip, "HTTP_X_CLIENT": "scraper"}, tag="api")
    n = rng.randint(1, 40)
    return DemoRequest("GET", "/rl/api/", headers={"REMOTE_ADDR": f"198.51.100.{n}", "HTTP_X_CLIENT": f"client-{n}"},
                       tag="api")


def _setup(ctx: DemoContext) -> None:
    from hotcache.ratelimit import reset_local_state

    reset_local_state()
    ctx.data["ratelimit"].update(before=metering.snapshot(), statuses=Counter(), retry_after=[], by_rule=Counter())


def _on_response(ctx: DemoContext, req: DemoRequest, resp: DemoResponse) -> None:
    data = ctx.data["ratelimit"]
    data["statuses"][f"{req.tag}:{resp.status}"] += 1
    if resp.status == 429:
        data["retry_after"].append(int(resp.headers.get("Retry-After", "0")))
        try:
            data["by_rule"][json.loads(resp.body).get("rule")] += 1
        except ValueError:
            pass


def _report(ctx: DemoContext) -> dict[str, Any]:
    data = ctx.data["ratelimit"]
    delta = metering.snapshot()
    delta.subtract(data["before"])
    events = {k[len("ev:ratelimit:"):]: v for k, v in delta.items() if k.startswith("ev:ratelimit:") and v}
    per_rule = {
        r["name"]: {"allowed": events.get(f"allowed:{r['name']}", 0), "denied": events.get(f"denied:{r['name']}", 0)}
        for r in _RULES
    }
    retry = data["retry_after"]
    return {
        "rules": per_rule,
        "requests_allowed": events.get("allowed", 0),
        "requests_denied": events.get("denied", 0),
        "denied_by_local_deny_cache": events.get("denied_local", 0),
        "degraded_decisions": {k: v for k, v in events.items() if k.startswith("degraded_")},
        "responses": dict(sorted(data["statuses"].items())),
        "429s_by_first_denying_rule": dict(data["by_rule"]),
        "retry_after_min_max": [min(retry), max(retry)] if retry else [],
    }


def scenario() -> Scenario:
    return Scenario(
        name="ratelimit",
        make_request=_make,
        weight=1.0,
        settings={"RATELIMIT_RULES": _RULES},
        middleware=["hotcache.middleware.RateLimitMiddleware"],
        setup=_setup,
        on_response=_on_response,
        report=_report,
    )
