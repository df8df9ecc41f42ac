"""What every report page is made of: the features it reports on (titles, meter events) and the shared
figure types (a gauge against its limit, a headline figure, a chart, a titled table). See docs/reports.md."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FEATURE_EVENTS", "FEATURE_TITLES", "Chart", "Figure", "Gauge", "Section", "cache_figures", "ratio"]

FEATURE_TITLES: dict[str, str] = {
    "ratelimit": "Rate limiting",
    "users": "User cache",
    "sessions": "Sessions",
    "mfa": "MFA codes",
    "apikeys": "API keys",
    "workbench": "Workbench sessions",
    "analytics": "Analytics",
}

# The events each feature records in the meter, in display order. Others seen in the meter follow.
FEATURE_EVENTS: dict[str, tuple[str, ...]] = {
    "ratelimit": ("allowed", "denied", "denied_local", "degraded_open", "degraded_closed", "degraded_local"),
    "users": ("hit", "miss", "fallback", "invalidated"),
    "sessions": ("hit", "miss", "fallback", "saved", "invalidated", "deferred"),
    "mfa": ("issued", "verified", "failed", "burned", "expired", "unavailable", "fallback", "resend_blocked"),
    "apikeys": ("allowed", "over_limit", "invalid", "fallback", "created", "revoked"),
    "workbench": ("saved", "loaded", "conflict", "ended", "persisted", "fallback"),
    "analytics": ("tracked", "fallback", "dropped", "synced_counters", "rejected"),
}


@dataclass(frozen=True, slots=True)
class Gauge:
    """A figure against its limit. ``value`` None means unknown (the source did not answer or lacks it)."""

    name: str
    value: int | None
    limit: int
    setting: str  # the HOTCACHE key the limit comes from
    warning_percent: float = 80.0
    note: str = ""

    @property
    def percent(self) -> float | None:
        if self.value is None or self.limit <= 0:
            return None
        return round(100.0 * self.value / self.limit, 1)

    @property
    def exceeded(self) -> bool:
        return self.value is not None and self.value > self.limit

    @property
    def level(self) -> str:
        """ok | warning | exceeded | unknown."""
        if self.value is None:
            return "unknown"
        if self.exceeded:
            return "exceeded"
        pct = self.percent
        return "warning" if pct is not None and pct >= self.warning_percent else "ok"

    def message(self) -> str:
        return (
            f"{self.name}: {self.value:,} > {self.limit:,} (HOTCACHE[{self.setting!r}])"
            if self.value is not None
            else f"{self.name}: unknown"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "setting": self.setting,
            "percent": self.percent,
            "level": self.level,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Chart:
    """Data for one chart: x labels (oldest first) and one or more series stacked per x."""

    title: str
    labels: list[str]
    series: list[tuple[str, list[int]]]
    limit: int | None = None  # drawn as a line (a budget)
    limit_label: str = ""
    time_series: bool = False  # labels are times, oldest first (the table beside it lists them newest first)


@dataclass(slots=True)
class Section:
    """A titled table (and optional chart) on a report page. ``rows`` empty shows ``empty``."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    chart: Chart | None = None
    note: str = ""
    empty: str = "No data yet."


@dataclass(frozen=True, slots=True)
class Figure:
    """A headline number: label, value (already formatted where it is a ratio), and what it means."""

    label: str
    value: Any
    help: str = ""


def ratio(part: int, whole: int) -> str:
    """``part`` as a percentage of ``whole`` with one decimal, "n/a" when ``whole`` is 0."""
    return "n/a" if whole <= 0 else f"{100.0 * part / whole:.1f}%"


def cache_figures(totals: Counter[str], served: str) -> list[Figure]:
    """The headline figures of a cache in front of the database (the user cache, sessions), from its meter's
    hit/miss/fallback counts; ``served`` names what a hit is (e.g. "a user lookup")."""
    hit, miss = totals["hit"], totals["miss"]
    return [
        Figure("Cache hit ratio", ratio(hit, hit + miss), "hits / (hits + misses)"),
        Figure("Database queries avoided", hit, f"each hit is {served} the database did not serve"),
        Figure("Misses (loaded from the database)", miss),
        Figure("Fallbacks (Redis unavailable)", totals["fallback"]),
    ]
