"""Django autodiscovers this module: it adds hotcache's usage reports to ``admin.site`` (the "Hotcache"
section of the index). The views, URL patterns and ``install`` live in hotcache.reports.admin;
see docs/reports.md."""

from __future__ import annotations

from django.contrib import admin

from hotcache.reports.admin import bar_chart, feature_view, install, may_view_reports, overview_view, report_urls

__all__ = ["bar_chart", "feature_view", "install", "may_view_reports", "overview_view", "report_urls"]

install(admin.site)
