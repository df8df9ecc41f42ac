"""The sessions page: hit ratio, database reads avoided, misses, fallbacks, saves and owed invalidations, from
the meter. See docs/reports.md#per-feature-pages."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from hotcache.reports._figures import Figure, ratio
from hotcache.reports._registry import register_figures

if TYPE_CHECKING:
    from hotcache.reports._summary import FeatureSummary

__all__: list[str] = []


@register_figures("sessions")
def _figures(s: FeatureSummary, totals: Counter[str]) -> None:
    hit, miss = totals["hit"], totals["miss"]
    s.figures += [
        Figure("Cache hit ratio", ratio(hit, hit + miss), "hits / (hits + misses)"),
        Figure("Database queries avoided", hit, "each hit is a session read the database did not serve"),
        Figure("Misses (loaded from the database)", miss),
        Figure("Fallbacks (Redis unavailable)", totals["fallback"]),
        Figure("Saves published to Redis", totals["saved"]),
        Figure("Invalidations (logout, flush, cycle_key)", totals["invalidated"]),
        Figure("Invalidations owed after an outage", totals["deferred"], "replayed before the next session read"),
    ]
