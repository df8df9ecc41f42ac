"""The MFA codes page: codes issued, verified, failed, success rate, burned, expired, resends blocked and
fallbacks, from the meter. See docs/reports.md#per-feature-pages."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from hotcache.reports._figures import Figure, ratio
from hotcache.reports._registry import register_figures

if TYPE_CHECKING:
    from hotcache.reports._summary import FeatureSummary

__all__: list[str] = []


@register_figures("mfa")
def _figures(s: FeatureSummary, totals: Counter[str]) -> None:
    verified, failed = totals["verified"], totals["failed"]
    s.figures += [
        Figure("Codes issued", totals["issued"]),
        Figure("Verified", verified),
        Figure("Failed attempts", failed),
        Figure("Verification success rate", ratio(verified, verified + failed), "verified / (verified + failed)"),
        Figure("Codes burned (too many attempts)", totals["burned"]),
        Figure("Expired", totals["expired"]),
        Figure("Resends blocked", totals["resend_blocked"]),
        Figure("Fallbacks (MongoDB path)", totals["fallback"]),
    ]
