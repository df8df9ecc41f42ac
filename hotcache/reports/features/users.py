"""The user cache page: hit ratio, database queries avoided, misses, fallbacks and invalidations, from the
meter. See docs/reports.md#per-feature-pages."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from hotcache.reports._figures import Figure, cache_figures
from hotcache.reports._registry import register_figures

if TYPE_CHECKING:
    from hotcache.reports._summary import FeatureSummary

__all__: list[str] = []


@register_figures("users")
def _figures(s: FeatureSummary, totals: Counter[str]) -> None:
    s.figures += [*cache_figures(totals, "a user lookup"), Figure("Invalidations", totals["invalidated"])]
