"""Geometry for the report pages' inline SVG: stacked bar charts (each with its numbers as a table) and
the gauges of a figure against its limit. No JavaScript, no CDN; the templates draw what this computes.
See docs/reports.md#charts."""

from __future__ import annotations

from typing import Any

from django.template.defaultfilters import filesizeformat

from hotcache.reports._figures import Chart, Gauge

__all__ = ["bar_chart", "gauge"]

_PALETTE = ("#417690", "#ba2121", "#e0a800", "#5b8a3a", "#8e5ea2", "#d2691e", "#3a7ca5", "#7f7f7f")
_W, _H, _PAD_L, _PAD_B, _PAD_T = 640, 200, 48, 34, 12


def bar_chart(chart: Chart, *, time_series: bool = True) -> dict[str, Any]:
    """Geometry for an inline SVG stacked bar chart (the template draws it; no JavaScript, no CDN).

    ``time_series``: labels are days, oldest first; the table beside the chart lists them newest first.
    """
    n = max(1, len(chart.labels))
    totals = [sum(values[i] for _, values in chart.series) for i in range(len(chart.labels))]
    peak = max([*totals, 0])
    # The budget line is drawn when it is on a readable scale; far above the bars it would flatten them.
    show_limit = bool(chart.limit and chart.limit <= max(peak, 1) * 4)
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


def gauge(limit: Gauge) -> dict[str, Any]:
    """A gauge's fill (of a 200 px track), colour by level, and its value and limit as text (bytes for memory)."""
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
