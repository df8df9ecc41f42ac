"""Analytics in the demo: browser beacons to POST /hotcache/analytics/track plus page views tracked by
AnalyticsMiddleware on every other scenario's pages; the sync in ``finish``; MongoDB writes compared with
the seed's "before" path (one MongoDB write per event)."""

from __future__ import annotations

import json
from typing import Any

from config.demo.runner import DemoContext, DemoRequest, DemoResponse, Scenario
from hotcache import analytics, metering
from hotcache.analytics import _documents
from hotcache.backends import mongo

__all__ = ["scenario"]

_EVENTS = ["click", "signup_started", "video.play", "search", "add_to_cart"]
_PATHS = ["/", "/pricing", "/docs/start", "/blog/redis-counters", "/checkout"]


def _setup(ctx: DemoContext) -> None:
    ctx.data["analytics"].update(before=metering.snapshot(), beacons=0, rejected=0)


def _beacon(ctx: DemoContext, i: int) -> DemoRequest:
    rng = ctx.rng
    if rng.random() < 0.03:  # a broken client: the endpoint answers 400 naming the field, nothing is counted
        body = json.dumps({"event": "bad name:*", "path": "/"})
    else:
        body = json.dumps(
            {
                "event": rng.choice(_EVENTS),
                "path": rng.choice(_PATHS) + ("?utm_source=mail" if rng.random() < 0.2 else ""),
                "visitor_id": f"visitor-{int(rng.paretovariate(1.1)) % 500}",
            }
        )
    return DemoRequest(
        "POST",
        "/hotcache/analytics/track",
        data=body,
        content_type="application/json",
        headers={"REMOTE_ADDR": "203.0.113.7"},
    )


def _on_response(ctx: DemoContext, req: DemoRequest, resp: DemoResponse) -> None:
    state = ctx.data["analytics"]
    if resp.status == 204:
        state["beacons"] += 1
    elif resp.status == 400:
        state["rejected"] += 1


def _events(delta: Any, name: str) -> int:
    return int(delta.get(f"ev:analytics:{name}", 0))


def _finish(ctx: DemoContext) -> dict[str, Any]:
    state = ctx.data["analytics"]
    traffic = metering.snapshot()
    traffic.subtract(state["before"])
    try:  # index creation (once per process) is set-up, not a write the comparison should count
        _documents.hourly_collection()
        _documents.visitors_collection()
    except mongo.MongoUnavailable:
        pass
    before_sync = metering.snapshot()
    result = analytics.sync(include_current_hour=True)
    after = metering.snapshot()
    sync_delta = after.copy()
    sync_delta.subtract(before_sync)
    tracked = _events(traffic, "tracked") + _events(traffic, "fallback")
    try:
        in_mongo = sum(d.get("count", 0) for d in mongo.collection(analytics.HOURLY, feature="demo").find({}))
    except mongo.MongoUnavailable:
        in_mongo = -1
    state["figures"] = {
        "events_tracked": tracked,
        "beacons_accepted": state["beacons"],
        "beacons_rejected_400": state["rejected"],
        "page_views_by_middleware": _events(traffic, "tracked") + _events(traffic, "fallback") - state["beacons"],
        "via_redis": _events(traffic, "tracked"),
        "via_fallback_buffer": _events(traffic, "fallback"),
        "dropped": _events(traffic, "dropped") + _events(sync_delta, "dropped"),
        "sync_counters_moved": result.counters,
        "sync_error": result.error or None,
        "mongo_writes_without_hotcache": tracked,  # the "before" path: one MongoDB write per event
        # Bulk writes of the sync (and of the outage buffer, on the request path only while Redis is down).
        "mongo_writes_with_hotcache": int(traffic.get("mongo:analytics", 0) + sync_delta.get("mongo:analytics", 0)),
        "mongo_total_equals_events": in_mongo == tracked,
        "mongo_event_total": in_mongo,
    }
    return {}


def _report(ctx: DemoContext) -> dict[str, Any]:
    return dict(ctx.data["analytics"].get("figures", {}))


def scenario() -> Scenario:
    return Scenario(
        name="analytics",
        make_request=_beacon,
        weight=0.5,
        middleware=["hotcache.middleware.AnalyticsMiddleware"],
        setup=_setup,
        on_response=_on_response,
        finish=_finish,
        report=_report,
    )
