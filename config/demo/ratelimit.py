"""Rate limiting in the demo: API clients and login attempts through RateLimitMiddleware; a few abusers
exceed their limits. The report shows allowed/denied per rule (from the metering events) and 429s."""

from __future__ import annotations

import json
from collections import Counter

from config.demo.runner import DemoContext, DemoRequest, DemoResponse, Figure, Scenario
from hotcache import metering

__all__ = ["scenario"]

_RULES = [
    {
        "name": "demo-login-burst",
        "rate": "5/10s",
        "key": "ip",
        "path": "/rl/login/",
        "methods": ["POST"],
        "policy": "closed",
        "headers": True,
    },
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
    return DemoRequest(
        "GET", "/rl/api/", headers={"REMOTE_ADDR": f"198.51.100.{n}", "HTTP_X_CLIENT": f"client-{n}"}, tag="api"
    )


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


def _report(ctx: DemoContext) -> list[Figure]:
    data = ctx.data["ratelimit"]
    delta = metering.snapshot()
    delta.subtract(data["before"])
    events = {k[len("ev:ratelimit:") :]: v for k, v in delta.items() if k.startswith("ev:ratelimit:") and v}
    per_rule = {
        r["name"]: {"allowed": events.get(f"allowed:{r['name']}", 0), "denied": events.get(f"denied:{r['name']}", 0)}
        for r in _RULES
    }
    retry = data["retry_after"]
    degraded = {k: v for k, v in events.items() if k.startswith("degraded_")}
    responses = dict(sorted(data["statuses"].items()))
    return [
        Figure(
            "rules",
            "Decisions per rule",
            per_rule,
            "requests",
            "allowed/denied per rule: login-burst = demo-login-burst (5/10s per IP on POST /rl/login/), "
            "api-per-ip = demo-api-per-ip (30/m), api-per-key = demo-api-per-key (60/m per X-Client)",
            text=", ".join(
                f"{name.removeprefix('demo-')} {v['allowed']:,}/{v['denied']:,}" for name, v in per_rule.items()
            ),
        ),
        Figure(
            "requests_allowed",
            "Requests allowed",
            events.get("allowed", 0),
            "requests",
            "requests every matching rule allowed",
        ),
        Figure(
            "requests_denied",
            "Requests denied",
            events.get("denied", 0),
            "requests",
            "requests at least one rule denied (answered 429 with Retry-After)",
        ),
        Figure(
            "denied_by_local_deny_cache",
            "Denied from the local deny cache",
            events.get("denied_local", 0),
            "requests",
            "denials answered in-process, without a Redis command, for a client already refused",
        ),
        Figure(
            "degraded_decisions",
            "Degraded decisions",
            degraded,
            "requests",
            "decisions made by a rule's outage policy because Redis was unavailable (none with Redis up)",
        ),
        Figure(
            "responses",
            "Responses",
            responses,
            "responses",
            "HTTP statuses by kind of request (login: POST /rl/login/, api: GET /rl/api/)",
            text=", ".join(f"{k.replace(':', ' ')} x{v:,}" for k, v in responses.items()) or "none",
        ),
        Figure(
            "429s_by_first_denying_rule",
            "429s by first denying rule",
            dict(data["by_rule"]),
            "responses",
            "the rule named in each 429's body",
        ),
        Figure(
            "retry_after_min_max",
            "Retry-After, shortest and longest",
            [min(retry), max(retry)] if retry else [],
            "s",
            "the Retry-After header of the 429s: how long the client was told to wait",
            text=f"{min(retry)} to {max(retry)}" if retry else "no 429",
        ),
    ]


def scenario() -> Scenario:
    return Scenario(
        name="ratelimit",
        make_request=_make,
        expected_statuses=frozenset({200, 429}),
        weight=1.0,
        settings={"RATELIMIT_RULES": _RULES},
        middleware=["hotcache.middleware.RateLimitMiddleware"],
        setup=_setup,
        on_response=_on_response,
        report=_report,
    )
