"""What each admin report page shows, as template context computed from overview() and feature_summary():
the overview's billed-commands-per-day chart and gauges, a feature page's events chart, sections and per-day
table. No HTTP here: hotcache.reports.admin adds the request's parts. See docs/reports.md."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hotcache.reports import _meter
from hotcache.reports._budget import METER_SCOPE
from hotcache.reports._figures import Chart
from hotcache.reports._overview import overview
from hotcache.reports._registry import detail_filters
from hotcache.reports._summary import feature_summary
from hotcache.reports.charts import bar_chart, gauge

__all__ = ["day_choices", "feature_page", "overview_page"]


def day_choices(days: int) -> list[int]:
    """The ranges the page offers: a week, two, thirty days, the configured default and the one shown."""
    return sorted({7, 14, 30, _meter.report_days(), days})


def overview_page(days: int) -> dict[str, Any]:
    """The overview page: the overview, its billed-commands-per-day chart against the budget, and its gauges."""
    ov = overview(days)
    oldest_first = list(reversed(ov.days))
    consumers = [f.feature for f in ov.features if f.billed]
    chart = Chart(
        f"Redis billed commands per day, last {days} days",
        [d.day.strftime("%m-%d") for d in oldest_first],
        [(name, [d.billed_by_feature.get(name, 0) for d in oldest_first]) for name in consumers]
        or [("billed", [0 for _ in oldest_first])],
        limit=ov.commands_today.limit,
        limit_label="daily budget",
    )
    return {
        "ov": ov,
        "chart": bar_chart(chart),
        "gauges": [gauge(limit) for limit in ov.limits],
        "today": ov.days[0],
        "meter_scope": METER_SCOPE,
        "fallbacks_period": sum(ov.fallbacks.values()),
        "fallbacks_today_total": sum(ov.fallbacks_today.values()),
    }


def feature_page(feature: str, days: int, query: Mapping[str, str]) -> dict[str, Any]:
    """``feature``'s page. ``query``: the page's query string; the filters its details accept are taken from
    it as strings of at most 200 characters (a bad one is ignored with a note, never an error)."""
    accepted = detail_filters(feature)
    filters = {name: query[name][:200] for name in accepted if query.get(name)}
    summary = feature_summary(feature, days, filters)
    oldest_first = list(reversed(summary.per_day))
    shown = [e for e in summary.events if summary.totals.get(e)]
    events_chart = Chart(
        f"{summary.title}: events per day",
        [d.strftime("%m-%d") for d, _ in oldest_first],
        [(e, [counts.get(e, 0) for _, counts in oldest_first]) for e in shown],
    )
    return {
        "summary": summary,
        "chart": bar_chart(events_chart) if shown else None,
        "sections": [
            {"section": s, "chart": bar_chart(s.chart, time_series=s.chart.time_series) if s.chart else None}
            for s in summary.sections
        ],
        # The events, then the feature's Redis billed commands, round trips and commands sent that day.
        "per_day_rows": [
            (d, [counts.get(e, 0) for e in summary.events], redis)
            for (d, counts), redis in zip(summary.per_day, summary.redis_per_day, strict=True)
        ],
        "filter_fields": [{"name": n, "value": summary.filters.get(n, "")} for n in accepted],
    }
