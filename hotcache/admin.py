"""The usage reports in the Django admin: model-free, staff-only views that render hotcache.reports.

How they plug into the default ``admin.site`` (no AdminSite subclass, no models):

* The views are wrapped in ``admin.site.admin_view`` (login redirect for anonymous and non-staff users,
  CSRF, never-cache) and routed by ``hotcache/urls.py`` (``/hotcache/reports/`` when the host includes
  ``path("hotcache/", include("hotcache.urls"))``). ``HOTCACHE['REPORTS_PERMISSION']``, when set, is
  checked as well (403 without it).
* A "Hotcache" section is added to the admin index and the nav sidebar by wrapping the site's
  ``get_app_list`` once (``install(site)``, called for ``admin.site`` when Django autodiscovers this
  module). A template override of ``admin/index.html`` would only work if hotcache were listed before
  ``django.contrib.admin`` in INSTALLED_APPS, so the app list is the reliable hook. A host with its own
  AdminSite calls ``hotcache.admin.install(my_site)`` and routes ``report_urls(my_site)``.

Charts are inline SVG computed here from reports.Chart data, each with its numbers in a table beside it.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, URLPattern, path, reverse

from hotcache import reports
from hotcache.conf import FEATURES, hotcache_settings

__all__ = ["bar_chart", "feature_view", "install", "may_view_reports", "overview_view", "report_urls"]

_PALETTE = ("#417690", "#ba2121", "#e0a800", "#5b8a3a", "#8e5ea2", "#d2691e", "#3a7ca5", "#7f7f7f")
_W, _H, _PAD_L, _PAD_B, _PAD_T = 640, 200, 48, 34, 12


def may_view_reports(request: HttpRequest, site: AdminSite | None = None) -> bool:
    """Active staff (the admin's own test) and, if HOTCACHE['REPORTS_PERMISSION'] is set, that permission."""
    site = site or admin.site
    if not site.has_permission(request):
        return False
    perm = hotcache_settings.REPORTS_PERMISSION
    return perm is None or request.user.has_perm(perm)


def _days_param(request: HttpRequest) -> int:
    try:
        return reports.report_days(int(request.GET.get("days", "")))
    except ValueError:
        return reports.report_days()


def _nav(request: HttpRequest, current: str) -> list[dict[str, Any]]:
    items = [{"key": "overview", "title": "Overview", "url": reverse("hotcache:reports")}]
    for feature in FEATURES:
        if hotcache_settings.enabled(feature):
            items.append(
                {
                    "key": feature,
                    "title": reports.FEATURE_TITLES[feature],
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
        "reports_nav": _nav(request, current),
        "days": days,
        "day_choices": sorted({7, 14, 30, reports.report_days(), days}),
        "max_days": reports.MAX_DAYS,
    }


def overview_view(request: HttpRequest, site: AdminSite | None = None) -> HttpResponse:
    site = site or admin.site
    if not may_view_reports(request, site):
        raise PermissionDenied
    days = _days_param(request)
    ov = reports.overview(days)
    oldest_first = list(reversed(ov.days))
    consumers = [f.feature for f in ov.features if f.commands]
    chart = reports.Chart(
        f"Redis commands per day, last {days} days",
        [d.day.strftime("%m-%d") for d in oldest_first],
        [(name, [d.commands_by_feature.get(name, 0) for d in oldest_first]) for name in consumers]
        or [("commands", [0 for _ in oldest_first])],
        limit=ov.commands_today.limit,
        limit_label="daily budget",
    )
    ctx = _context(request, site, "hotcache usage", "overview", days)
    ctx.update(
        ov=ov,
        chart=bar_chart(chart),
        gauges=[_gauge(limit) for limit in ov.limits],
        fallbacks_period=sum(ov.fallbacks.values()),
        fallbacks_today_total=sum(ov.fallbacks_today.values()),
    )
    return TemplateResponse(request, "admin/hotcache/overview.html", ctx)


def feature_view(request: HttpRequest, feature: str, site: AdminSite | None = None) -> HttpResponse:
    site = site or admin.site
    if feature not in FEATURES:
        raise Http404(f"hotcache has no feature {feature!r}")
    if not may_view_reports(request, site):
        raise PermissionDenied
    days = _days_param(request)
    # Filters are strings checked by the detail function (a bad one is ignored with a note, never a 500).
    accepted = reports.detail_filters(feature)
    filters = {name: request.GET[name][:200] for name in accepted if request.GET.get(name)}
    summary = reports.feature_summary(feature, days, filters)
    oldest_first = list(reversed(summary.per_day))
    shown = [e for e in summary.events if summary.totals.get(e)]
    events_chart = reports.Chart(
        f"{summary.title}: events per day",
        [d.strftime("%m-%d") for d, _ in oldest_first],
        [(e, [counts.get(e, 0) for _, counts in oldest_first]) for e in shown],
    )
    ctx = _context(request, site, f"hotcache: {summary.title}", feature, days)
    ctx.update(
        summary=summary,
        chart=bar_chart(events_chart) if shown else None,
        sections=[
            {"section": s, "chart": bar_chart(s.chart, time_series=s.chart.time_series) if s.chart else None}
            for s in summary.sections
        ],
        per_day_rows=[(d, [counts.get(e, 0) for e in summary.events]) for d, counts in summary.per_day],
        filter_fields=[{"name": n, "value": summary.filters.get(n, "")} for n in accepted],
    )
    return TemplateResponse(request, "admin/hotcache/feature.html", ctx)


def bar_chart(chart: reports.Chart, *, time_series: bool = True) -> dict[str, Any]:
    """Geometry for an inline SVG stacked bar chart (the template draws it; no JavaScript, no CDN).

    ``time_series``: labels are days, oldest first; the table beside the chart lists them newest first.
    """
    n = max(1, len(chart.labels))
    totals = [sum(values[i] for _, values in chart.series) for i in range(len(chart.labels))]
    peak = max([*totals, 0])
    # The budget line is drawn when it is on a readable scale; far above the bars it would flatten them.
    show_limit = bool(chart.limit) and chart.limit <= max(peak, 1) * 4
    top = max(peak, chart.limit if show_limit and chart.limit else 0, 1) * 1.1
    plot_w, plot_h = _W - _PAD_L - 8, _H - _PAD_B - _PAD_T
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.7)

    def y_of(v: float) -> float:
        return _PAD_T + plot_h - plot_h * v / top

    bars = []
    for i, label in enumerate(chart.labels):
        base = 0
        x = _PAD_L + i * slot + (slot - bar_w) / 2
        for k, (name, values) in enumerate(chart.series):
            v = values[i]
            if v <= 0:
                continue
            bars.append(
                {
                    "x": round(x, 1),
                    "y": round(y_of(base + v), 1),
                    "w": round(bar_w, 1),
                    "h": round(y_of(base) - y_of(base + v), 1),
                    "color": _PALETTE[k % len(_PALETTE)],
                    "title": f"{label} {name}: {v:,}",
                }
            )
            base += v
    step = max(1, n // 8)  # at most ~8 x labels, so they stay readable
    xlabels = [
        {"x": round(_PAD_L + i * slot + slot / 2, 1), "text": label}
        for i, label in enumerate(chart.labels)
        if i % step == 0 or i == n - 1
    ]
    ticks = [{"y": round(y_of(top * f), 1), "text": f"{round(top * f):,}"} for f in (0, 0.5, 1)]
    return {
        "title": chart.title,
        "width": _W,
        "height": _H,
        "plot_left": _PAD_L,
        "plot_right": _W - 8,
        "baseline": round(y_of(0), 1),
        "center_x": round(_PAD_L + plot_w / 2, 1),
        "label_y": _H - _PAD_B + 16,
        "bars": bars,
        "xlabels": xlabels,
        "ticks": ticks,
        "limit_y": round(y_of(chart.limit), 1) if show_limit and chart.limit else None,
        "limit_label": f"{chart.limit_label} {chart.limit:,}" if chart.limit else "",
        "limit_note": (
            f"{chart.limit_label} {chart.limit:,} is off the scale: the busiest day used "
            f"{100.0 * peak / chart.limit:.1f}% of it"
            if chart.limit and not show_limit
            else ""
        ),
        "legend": [
            {"name": name, "color": _PALETTE[k % len(_PALETTE)], "total": sum(values)}
            for k, (name, values) in enumerate(chart.series)
        ],
        "table_head": [name for name, _ in chart.series],
        "table": [
            (label, [values[i] for _, values in chart.series], totals[i]) for i, label in enumerate(chart.labels)
        ][:: -1 if time_series else 1],
        "empty": not any(totals),
    }


def _gauge(limit: reports.Limit) -> dict[str, Any]:
    from django.template.defaultfilters import filesizeformat

    pct = limit.percent

    def fmt(v: int | None) -> str:
        if v is None:
            return "unknown"
        return str(filesizeformat(v)) if limit.setting == "REDIS_MEMORY_LIMIT" else f"{v:,}"

    return {
        "limit": limit,
        "fill_px": f"{0 if pct is None else min(100.0, pct) * 2:.1f}",  # of a 200 px track
        "value_text": fmt(limit.value),
        "limit_text": fmt(limit.limit),
        "color": {"ok": "#5b8a3a", "warning": "#e0a800", "exceeded": "#ba2121"}.get(limit.level, "#999"),
    }


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
                "name": reports.FEATURE_TITLES[f],
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


install(admin.site)
