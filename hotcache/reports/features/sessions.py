"""The sessions page: hit ratio, database reads avoided, misses, fallbacks, saves and owed invalidations, from
the meter. See docs/reports.md#per-feature-pages."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from hotcache.reports._figures import Figure, cache_figures
from hotcache.reports._registry import register_figures

if TYPE_CHECKING:
    from hotcache.reports._summary import FeatureSummary

__all__: list[str] = []


@register_figures("sessions")
def _figures(s: FeatureSummary, totals: Counter[str]) -> None:
    s.figures += [
        *cache_figures(totals, "a session read"),
        Figure("Saves published to Redis", totals["saved"]),
        Figure("Invalidations (logout, flush, cycle_key)", totals["invalidated"]),
        Figure("Invalidations owed after an outage", totals["deferred"], "replayed before the next session read"),
    ]
