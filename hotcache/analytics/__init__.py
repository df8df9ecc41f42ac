"""Analytics: event counters in Redis (one script per event), moved to MongoDB exactly once by the sync.

``track()`` and the endpoint count, ``sync()`` moves closed hours, ``report()`` reads both stores.
Everything about it, costs and failures included: docs/analytics.md.
"""

from __future__ import annotations

import logging

from hotcache.analytics._documents import HOURLY as HOURLY
from hotcache.analytics._documents import MAX_CHUNK as MAX_CHUNK
from hotcache.analytics._documents import VISITORS as VISITORS
from hotcache.analytics._events import (
    EVENT_PATTERN,
    MAX_RAW_PATH_LENGTH,
    MAX_VISITOR_ID_LENGTH,
    OVERFLOW,
    normalize_path,
    validate_event,
)
from hotcache.analytics._events import FEATURE as FEATURE
from hotcache.analytics._fallback import SLOTS as SLOTS
from hotcache.analytics._fallback import flush_fallback
from hotcache.analytics._hot import flush_batch, track
from hotcache.analytics._report import AnalyticsReport, report
from hotcache.analytics._sync import AnalyticsSyncResult, sync
from hotcache.analytics.middleware import AnalyticsMiddleware
from hotcache.analytics.urls import urlpatterns as urlpatterns  # hotcache.urls includes "hotcache.analytics"
from hotcache.analytics.views import track_view

__all__ = [
    "EVENT_PATTERN",
    "MAX_RAW_PATH_LENGTH",
    "MAX_VISITOR_ID_LENGTH",
    "OVERFLOW",
    "AnalyticsMiddleware",
    "AnalyticsReport",
    "AnalyticsSyncResult",
    "SyncResult",
    "flush_batch",
    "flush_fallback",
    "normalize_path",
    "report",
    "sync",
    "track",
    "track_view",
    "validate_event",
]

SyncResult = AnalyticsSyncResult  # the name before the feature package (hotcache.apikeys has its own SyncResult)

log = logging.getLogger("hotcache.analytics")
