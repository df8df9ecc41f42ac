"""The analytics URLs, included by hotcache.urls under "analytics/": POST /hotcache/analytics/track."""

from __future__ import annotations

from django.urls import path

from hotcache.analytics.views import track_view

__all__ = ["urlpatterns"]

urlpatterns = [path("track", track_view, name="analytics-track")]
