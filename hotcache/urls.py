"""hotcache's URLs; include them in the host project: ``path("hotcache/", include("hotcache.urls"))``."""

from __future__ import annotations

from django.urls import include, path

app_name = "hotcache"

urlpatterns: list = [
    # --- Analytics (issue 8) ---
    # POST analytics/track, URL name "hotcache:analytics-track" (what a RATELIMIT_RULES entry targets).
    path("analytics/", include("hotcache.analytics")),
    # --- Reports (issue 9) ---
]
