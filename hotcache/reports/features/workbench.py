"""The workbench sessions page: saves, loads, conflicts, sessions ended and persisted (from the meter);
sessions in Redis now (hotcache.workbench.counts) and the persisted history count in MongoDB.
See docs/reports.md#workbench-page."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from hotcache.backends import mongo
from hotcache.reports._figures import Figure, Section
from hotcache.reports._registry import register_detail, register_figures

if TYPE_CHECKING:
    from hotcache.reports._summary import FeatureSummary

__all__: list[str] = []


@register_figures("workbench")
def _figures(s: FeatureSummary, totals: Counter[str]) -> None:
    s.figures += [
        Figure("Saves", totals["saved"]),
        Figure("Loads", totals["loaded"]),
        Figure("Conflicts", totals["conflict"], "a save lost to a newer version"),
        Figure("Sessions ended", totals["ended"]),
        Figure("Sessions persisted to MongoDB", totals["persisted"]),
        Figure("Fallbacks", totals["fallback"]),
    ]


@register_detail("workbench")
def _workbench_sessions(days: int) -> list[Section]:
    """Sessions in Redis now"""
    from hotcache import workbench

    c = workbench.counts()  # one Redis round trip of 4 O(1)/O(log n) commands
    return [
        Section(
            "Sessions in Redis now",
            ["Sessions", "Count"],
            [
                ["active (hot or waiting to be persisted)", c.active],
                ["idle longer than WORKBENCH_PERSIST_IDLE_AFTER", c.idle],
                ["ended, queued for history", c.ended],
                ["claimed by a persister run", c.claimed],
            ],
        )
    ]


@register_detail("workbench")
def _workbench_history(days: int) -> list[Section]:
    """Persisted sessions in MongoDB"""
    # One count on the history collection: bounded whatever the traffic.
    total = mongo.collection("workbench_history", feature="reports").count({})
    return [
        Section(
            "Persisted sessions in MongoDB",
            ["Collection", "Documents"],
            [["workbench_history", total]],
            note="Ended sessions that reached MongoDB history (all time).",
        )
    ]
