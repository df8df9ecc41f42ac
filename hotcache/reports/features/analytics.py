"""The analytics page: events tracked, synced, dropped and rejected (from the meter); events per hour and
per day, top events and paths, distinct visitors and the counts not yet synced, from one
hotcache.analytics.report() for the page's range, optionally for one event (``?event=``).
See docs/reports.md#analytics-page."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import TYPE_CHECKING

from hotcache import clock
from hotcache.backends.health import CLOSED, redis_gate
from hotcache.reports._figures import Chart, Figure, Section, ratio
from hotcache.reports._registry import InvalidFilter, register_detail, register_figures

if TYPE_CHECKING:
    from hotcache.reports._summary import FeatureSummary

__all__ = ["ANALYTICS_HOURS", "ANALYTICS_VISITOR_ROWS"]

# Cost: one analytics.report() for the page's range: 4 MongoDB queries on aggregated hourly documents plus
# at most 4 Redis round trips over the unsynced hours (bounded by ANALYTICS_RETENTION_HOURS and the
# per-hour/per-day cardinality caps, not by traffic).
ANALYTICS_HOURS = 48  # hours in the per-hour chart (the last 48, or fewer when the range is shorter)
ANALYTICS_VISITOR_ROWS = 200  # rows of the distinct visitors table


@register_figures("analytics")
def _figures(s: FeatureSummary, totals: Counter[str]) -> None:
    tracked = totals["tracked"]
    s.figures += [
        Figure("Events tracked", tracked),
        Figure("Counters synced to MongoDB", totals["synced_counters"]),
        Figure("Dropped", totals["dropped"], "lost while both stores were unavailable"),
        Figure("Drop rate", ratio(totals["dropped"], tracked + totals["dropped"])),
        Figure("Rejected", totals["rejected"], "invalid event names or properties"),
        Figure("Fallbacks (direct to MongoDB)", totals["fallback"]),
    ]


@register_detail("analytics", filters=("event",))
def _analytics_detail(days: int, event: str | None = None) -> list[Section]:
    """Analytics events from MongoDB and unsynced Redis counters"""
    from hotcache import analytics
    from hotcache.exceptions import InvalidName

    if event is not None:
        try:
            event = analytics.validate_event(event)
        except InvalidName as exc:
            msg = f"event names match {analytics.EVENT_PATTERN} ({str(event)[:70]!r} does not)"
            raise InvalidFilter("event", msg) from exc
    now = clock.utcnow()
    end = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    start = dt.datetime.combine(now.date() - dt.timedelta(days=days - 1), dt.time(), tzinfo=dt.UTC)
    rep = analytics.report(start, end, event)
    of = f" ({event})" if event else ""

    hourly = dict(rep.hourly)
    first_hour = max(start, end - dt.timedelta(hours=ANALYTICS_HOURS))
    n_hours = int((end - first_hour).total_seconds() // 3600)
    hours = [first_hour + dt.timedelta(hours=i) for i in range(n_hours)]
    daily = dict(rep.daily)
    day_list = [start.date() + dt.timedelta(days=i) for i in range(days)]
    visitors = sorted(rep.visitors, key=lambda v: (-v[1].toordinal(), v[0]))
    visitor_note = (
        f"Showing {ANALYTICS_VISITOR_ROWS} of {len(visitors)} rows (newest days first)."
        if len(visitors) > ANALYTICS_VISITOR_ROWS
        else ""
    )
    redis_down = redis_gate.state != CLOSED
    return [
        Section(
            f"Events per hour{of}, last {n_hours} hours (UTC)",
            ["Hour (UTC)", "Events"],  # the chart's own table lists them
            chart=Chart(f"Events per hour{of}", [h.strftime("%m-%d %H:00") for h in hours],
                        [("events", [hourly.get(h, 0) for h in hours])], time_series=True),
            empty=f"No events in the last {n_hours} hours.",
        ),
        Section(
            f"Events per day{of}, last {days} days (UTC)",
            ["Day (UTC)", "Events"],
            chart=Chart(f"Events per day{of}", [d.strftime("%m-%d") for d in day_list],
                        [("events", [daily.get(d, 0) for d in day_list])], time_series=True),
            empty=f"No events in the last {days} days.",
        ),
        Section(
            "Top events",
            ["Event", "Count"],
            [[e, n] for e, n in rep.top_events],
            chart=Chart("Top events", [e for e, _ in rep.top_events[:10]],
                        [("count", [n for _, n in rep.top_events[:10]])]) if rep.top_events else None,
            empty="No events in this range.",
        ),
        Section("Top paths", ["Path", "Count"], [[p or "(none)", n] for p, n in rep.top_paths],
                empty="No paths in this range."),
        Section(
            "Distinct visitors per event and day",
            ["Day (UTC)", "Event", "Visitors"],
            [[d.isoformat(), e, n] for e, d, n in visitors[:ANALYTICS_VISITOR_ROWS]],
            note=visitor_note or "HyperLogLog estimates (about 0.8% error); not counted while Redis is down.",
            empty="No visitors counted in this range.",
        ),
        Section(
            "Not yet synced to MongoDB",
            ["Counts", "Events"],
            [["still only in Redis (included above)", rep.unsynced]],
            note="Redis is unavailable: unsynced counts are unknown and not included above." if redis_down else
            "The sync (hotcache.tasks.sync_analytics, hourly) moves closed hours to MongoDB.",
        ),
    ]
