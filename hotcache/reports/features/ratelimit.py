"""The rate limiting page: requests checked, allowed, denied (also from the local deny cache), degraded
decisions, and allowed/denied per rule, from the meter. See docs/reports.md#per-feature-pages."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from hotcache.reports._figures import Chart, Figure, Section, ratio
from hotcache.reports._registry import register_figures

if TYPE_CHECKING:
    from hotcache.reports._summary import FeatureSummary

__all__: list[str] = []


@register_figures("ratelimit")
def _figures(s: FeatureSummary, totals: Counter[str]) -> None:
    allowed, denied = totals["allowed"], totals["denied"]
    s.figures += [
        Figure("Requests checked", allowed + denied, "allowed + denied"),
        Figure("Allowed", allowed),
        Figure("Denied", denied, "answered 429 (or the configured status)"),
        Figure("Denied from the local deny cache", totals["denied_local"], "no Redis command spent"),
        Figure("Denial rate", ratio(denied, allowed + denied)),
        Figure(
            "Degraded decisions",
            totals["degraded_open"] + totals["degraded_closed"] + totals["degraded_local"],
            "decided by the outage policy while Redis was unavailable",
        ),
    ]
    rules = sorted({e.split(":", 1)[1] for e in totals if e.startswith(("allowed:", "denied:"))})
    rows: list[list[Any]] = [
        [
            rule,
            totals[f"allowed:{rule}"],
            totals[f"denied:{rule}"],
            ratio(totals[f"denied:{rule}"], totals[f"allowed:{rule}"] + totals[f"denied:{rule}"]),
        ]
        for rule in rules
    ]
    chart = (
        Chart(
            "Allowed and denied per rule",
            rules,
            [("allowed", [r[1] for r in rows]), ("denied", [r[2] for r in rows])],
        )
        if rows
        else None
    )
    s.sections.append(
        Section("Per rule", ["Rule", "Allowed", "Denied", "Denial rate"], rows, chart=chart,
                empty="No rule has been checked yet.")
    )
