"""Analytics in the demo: browser beacons to POST /hotcache/analytics/track plus page views tracked by
AnalyticsMiddleware on every other scenario's pages; the sync in ``finish``; MongoDB writes compared with
the background document's "before" path (one MongoDB write per event) in the report's "MongoDB operations
saved" table (mongo_ops_without_hotcache / mongo_ops_with_hotcache in --json)."""

from __future__ import annotations

import json
from typing import Any

from config.demo.runner import DemoContext, DemoRequest, DemoResponse, Figure, Scenario
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


def _finish(ctx: DemoContext) -> list[Figure]:
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
    state.update(tracked=tracked, in_mongo=in_mongo, sync_error=result.error or None)
    return [
        Figure(
            "events_tracked",
            "Events tracked",
            tracked,
            "events",
            "beacons accepted plus page views counted by AnalyticsMiddleware",
        ),
        Figure(
            "beacons_accepted",
            "Beacons accepted",
            state["beacons"],
            "requests",
            "POST /hotcache/analytics/track answered 204",
        ),
        Figure(
            "beacons_rejected_400",
            "Beacons rejected",
            state["rejected"],
            "requests",
            "a broken client's beacon answered 400 naming the bad field (nothing counted)",
        ),
        Figure(
            "page_views_by_middleware",
            "Page views tracked",
            tracked - state["beacons"],
            "events",
            "successful GETs AnalyticsMiddleware counted on the other scenarios' pages",
        ),
        Figure(
            "via_redis",
            "Counted in Redis",
            _events(traffic, "tracked"),
            "events",
            "events counted with one Redis round trip each",
        ),
        Figure(
            "via_fallback_buffer",
            "Counted in the fallback buffer",
            _events(traffic, "fallback"),
            "events",
            "events buffered in-process while Redis was unavailable, written to MongoDB in bulk",
        ),
        Figure(
            "dropped",
            "Dropped",
            _events(traffic, "dropped") + _events(sync_delta, "dropped"),
            "events",
            "events lost because the fallback buffer was full: must be 0 in a normal run",
        ),
        Figure(
            "sync_counters_moved",
            "Sync: counters moved",
            result.counters,
            "counters",
            "hourly counters the sync moved from Redis to MongoDB",
        ),
        Figure("sync_error", "Sync: error", result.error or None, "", "the sync's error, if any"),
        Figure(
            "mongo_total_equals_events",
            "MongoDB total equals events",
            in_mongo == tracked,
            "",
            "whether the event counts in MongoDB after the sync add up to the events tracked: must be yes",
        ),
        Figure(
            "mongo_event_total",
            "Events in MongoDB",
            in_mongo,
            "events",
            "the sum of the hourly counts in MongoDB after the sync (-1: MongoDB unreachable)",
        ),
    ]


def _verify(ctx: DemoContext) -> list[str]:
    state = ctx.data["analytics"]
    problems = []
    if state.get("in_mongo") != state.get("tracked"):
        problems.append(
            f"MongoDB holds {state.get('in_mongo')} events after the sync, {state.get('tracked')} were tracked"
        )
    error = state.get("sync_error")
    # With Redis down the sync stops and leaves its batches for the next run, as designed: not a failure.
    if error and not (ctx.redis_was_unavailable and str(error).startswith("RedisUnavailable")):
        problems.append(f"the sync failed: {error}")
    return problems


def _without_hotcache(ctx: DemoContext) -> int:
    return int(ctx.data["analytics"].get("tracked", 0))  # one MongoDB write per event


def scenario() -> Scenario:
    return Scenario(
        name="analytics",
        make_request=_beacon,
        expected_statuses=frozenset({204, 400}),  # 400: the broken client's beacons
        weight=0.5,
        middleware=["hotcache.middleware.AnalyticsMiddleware"],
        setup=_setup,
        on_response=_on_response,
        finish=_finish,
        verify=_verify,
        mongo_ops_without_hotcache=_without_hotcache,
    )
