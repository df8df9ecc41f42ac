"""The report pages in the Django admin: staff-only, model-free views that render hotcache.reports.pages,
their URL patterns, and the "Hotcache" section of an AdminSite's index (``install``). hotcache/admin.py,
which Django autodiscovers, installs it on ``admin.site``. See docs/reports.md#access."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, URLPattern, path, reverse

from hotcache.conf import FEATURES, hotcache_settings
from hotcache.reports import pages
from hotcache.reports._figures import FEATURE_TITLES
from hotcache.reports._meter import MAX_DAYS, report_days
from hotcache.reports.charts import bar_chart

__all__ = ["bar_chart", "feature_view", "install", "may_view_reports", "overview_view", "report_urls"]


def may_view_reports(request: HttpRequest, site: AdminSite | None = None) -> bool:
    """Active staff (the admin's own test) and, if HOTCACHE['REPORTS_PERMISSION'] is set, that permission."""
    site = site or admin.site
    if not site.has_permission(request):
        return False
    perm = hotcache_settings.REPORTS_PERMISSION
    return perm is None or request.user.has_perm(perm)


def _days_param(request: HttpRequest) -> int:
    try:
        return report_days(int(request.GET.get("days", "")))
    except ValueError:
        return report_days()


def _nav(current: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [{"key": "overview", "title": "Overview", "url": reverse("hotcache:reports")}]
    for feature in FEATURES:
        if hotcache_settings.enabled(feature):
            items.append(
                {
                    "key": feature,
                    "title": FEATURE_TITLES[feature],
                    "url": reverse("hotcache:reports-feature", args=[feature]),
                }
            )
    for item in items:
        item["current"] = item["key"] == current
    return items


def _context(request: HttpRequest, site: AdminSite, title: str, current: str, days: int) -> dict[str, Any]:
    return {
        **site.each_context(request),
        "title": title,
        "reports_nav": _nav(current),
        "days": days,
        "day_choices": pages.day_choices(days),
        "max_days": MAX_DAYS,
    }


def overview_view(request: HttpRequest, site: AdminSite | None = None) -> HttpResponse:
    site = site or admin.site
    if not may_view_reports(request, site):
        raise PermissionDenied
    days = _days_param(request)
    page = pages.overview_page(days)
    ctx = _context(request, site, "hotcache usage", "overview", days)
    ctx.update(page)
    return TemplateResponse(request, "admin/hotcache/overview.html", ctx)


def feature_view(request: HttpRequest, feature: str, site: AdminSite | None = None) -> HttpResponse:
    site = site or admin.site
    if feature not in FEATURES:
        raise Http404(f"hotcache has no feature {feature!r}")
    if not may_view_reports(request, site):
        raise PermissionDenied
    days = _days_param(request)
    page = pages.feature_page(feature, days, request.GET)
    ctx = _context(request, site, f"hotcache: {page['summary'].title}", feature, days)
    ctx.update(page)
    return TemplateResponse(request, "admin/hotcache/feature.html", ctx)


# --- wiring into an AdminSite --------------------------------------------------------------------


def report_urls(site: AdminSite | None = None) -> list[URLPattern]:
    """The report URL patterns for ``site`` (default admin.site); hotcache/urls.py includes these."""
    site = site or admin.site
    return [
        path("reports/", site.admin_view(lambda r: overview_view(r, site)), name="reports"),
        path(
            "reports/<str:feature>/",
            site.admin_view(lambda r, feature: feature_view(r, feature, site)),
            name="reports-feature",
        ),
    ]


def _app_entry() -> dict[str, Any] | None:
    try:
        models = [{"name": "Overview", "object_name": "overview", "url": reverse("hotcache:reports")}]
        models += [
            {
                "name": FEATURE_TITLES[f],
                "object_name": f,
                "url": reverse("hotcache:reports-feature", args=[f]),
            }
            for f in FEATURES
            if hotcache_settings.enabled(f)
        ]
    except NoReverseMatch:  # the host has not included hotcache.urls: no section rather than a broken index
        return None
    return {
        "name": "Hotcache",
        "app_label": "hotcache",
        "app_url": models[0]["url"],
        "has_module_perms": True,
        "models": [
            {
                "name": m["name"],
                "object_name": m["object_name"],
                "admin_url": m["url"],
                "add_url": None,
                "view_only": True,
                "perms": {"add": False, "change": False, "delete": False, "view": True},
            }
            for m in models
        ],
    }


def install(site: AdminSite) -> None:
    """Add the "Hotcache" reports section to ``site``'s app list (index page and nav sidebar). Idempotent."""
    if getattr(site, "_hotcache_reports_installed", False):
        return
    original = site.get_app_list

    def get_app_list(request: HttpRequest, app_label: str | None = None) -> list[dict[str, Any]]:
        apps = original(request, app_label)
        if app_label in (None, "hotcache") and may_view_reports(request, site):
            entry = _app_entry()
            if entry is not None:
                apps = sorted([*apps, entry], key=lambda a: a["name"].lower())
        return apps

    site.get_app_list = get_app_list  # type: ignore[method-assign]
    site._hotcache_reports_installed = True  # type: ignore[attr-defined]
