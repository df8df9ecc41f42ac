"""Usage reports as pure figures (no HTTP): Redis commands against the daily budget, Redis memory, MongoDB
connections, the health gate and fallbacks, and what each feature did, from the daily meter.

The admin pages (hotcache.reports.admin) and ``manage.py hotcache_status`` only render what is computed
here. API, costs and failure behaviour: docs/reports.md.
"""

from __future__ import annotations

import warnings
from typing import Any

from hotcache.reports import features as features  # importing it registers every feature's figures and details
from hotcache.reports._figures import FEATURE_EVENTS, FEATURE_TITLES, Chart, Figure, Gauge, Section
from hotcache.reports._meter import MAX_DAYS, report_days
from hotcache.reports._overview import DayRow, FeatureUsage, MongoConnections, Overview, overview
from hotcache.reports._registry import DetailFunction as DetailFunction
from hotcache.reports._registry import InvalidFilter, detail_filters, register_detail, register_figures
from hotcache.reports._status import StatusReport, status_report
from hotcache.reports._summary import FeatureSummary, feature_summary

# The per-feature pages' tuning constants, importable here as before.
from hotcache.reports.features.analytics import ANALYTICS_HOURS as ANALYTICS_HOURS
from hotcache.reports.features.analytics import ANALYTICS_VISITOR_ROWS as ANALYTICS_VISITOR_ROWS
from hotcache.reports.features.apikeys import APIKEYS_DAILY as APIKEYS_DAILY
from hotcache.reports.features.apikeys import APIKEYS_READ as APIKEYS_READ
from hotcache.reports.features.apikeys import APIKEYS_SHOWN as APIKEYS_SHOWN

__all__ = [
    "FEATURE_EVENTS",
    "FEATURE_TITLES",
    "MAX_DAYS",
    "Chart",
    "DayRow",
    "FeatureSummary",
    "FeatureUsage",
    "Figure",
    "Gauge",
    "InvalidFilter",
    "MongoConnections",
    "Overview",
    "Section",
    "StatusReport",
    "detail_filters",
    "feature_summary",
    "overview",
    "register_detail",
    "register_figures",
    "report_days",
    "status_report",
]

def __getattr__(name: str) -> Any:
    # ``Limit`` was this type's name until it was renamed ``Gauge`` (hotcache.ratelimit's limits are another thing).
    if name == "Limit":
        warnings.warn(
            "hotcache.reports.Limit is deprecated; use hotcache.reports.Gauge", DeprecationWarning, stacklevel=2
        )
        return Gauge
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
