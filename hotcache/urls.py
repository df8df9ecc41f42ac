"""hotcache's URLs; include them in the host project: ``path("hotcache/", include("hotcache.urls"))``."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, include, path

from hotcache.admin import report_urls  # reports: staff-only admin pages under reports/

app_name = "hotcache"

urlpatterns: list[URLPattern | URLResolver] = [
    # --- Analytics ---
    # POST analytics/track, URL name "hotcache:analytics-track" (what a RATELIMIT_RULES entry targets).
    path("analytics/", include("hotcache.analytics")),
    # --- Reports ---
    *report_urls(),  # /hotcache/reports/ and /hotcache/reports/<feature>/ (admin.site.admin_view)
]
