"""Reading the daily meter for a report: the range of days, one metering.read() and whether Redis answered
it, and the settings every page shares (warning percentage, enabled features). See docs/reports.md."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from hotcache import metering
from hotcache.backends.health import CLOSED, redis_gate
from hotcache.conf import FEATURES, hotcache_settings

__all__ = ["MAX_DAYS", "MeterView", "day_of", "enabled_features", "fallbacks", "read", "report_days",
           "warning_percent"]

MAX_DAYS = 40  # the meter keeps each day's hash 40 days (backends/meter_store._METER_TTL)

_REDIS_DOWN_NOTE = "Redis is unavailable: figures are this process's unflushed counts only."


@dataclass(frozen=True, slots=True)
class MeterView:
    """What a report read from the meter, and whether Redis answered (else: this process's unflushed counts)."""

    meter: metering.MeterRead
    redis_ok: bool
    redis_note: str


def report_days(days: int | None = None) -> int:
    """The number of days to show: ``days`` or HOTCACHE['REPORTS_DAYS'], clamped to 1..MAX_DAYS."""
    value = hotcache_settings.REPORTS_DAYS if days is None else days
    try:
        value = int(value)
    except (TypeError, ValueError):
        value = 30
    return max(1, min(MAX_DAYS, value))


def read(days: int) -> MeterView:
    """metering.read(days) (one pipeline: the daily meters and the MongoDB pools processes published) and
    whether Redis answered it.

    read() falls back to this process's unflushed counts when Redis is unavailable; its error events
    (counted under the feature "reports") tell the two apart without another round trip.
    """
    watched = ("ev:reports:redis_error", "ev:reports:gate_rejected")
    before = metering.snapshot()
    meter = metering.read(days)
    after = metering.snapshot()
    failed = any(after[k] > before[k] for k in watched)
    if failed or redis_gate.state != CLOSED:
        return MeterView(meter, False, _REDIS_DOWN_NOTE)
    return MeterView(meter, True, "")


def day_of(name: str) -> dt.date:
    """The UTC date of a meter hash named ``YYYYMMDD``."""
    return dt.datetime.strptime(name, "%Y%m%d").replace(tzinfo=dt.UTC).date()


def enabled_features() -> list[str]:
    return [f for f in FEATURES if hotcache_settings.enabled(f)]


def fallbacks(fields: Counter[str]) -> dict[str, int]:
    """Fallback events per feature (``ev:<feature>:fallback``) in a day's (or a period's) meter fields."""
    out: dict[str, int] = {}
    for name, n in fields.items():
        if name.startswith("ev:") and name.endswith(":fallback") and n:
            feat = name[3:].rsplit(":", 1)[0]
            out[feat] = out.get(feat, 0) + n
    return out


def warning_percent() -> float:
    """HOTCACHE['REPORTS_WARNING_PERCENT'], or 80 when it is not a number (checks.py reports that)."""
    value = hotcache_settings.REPORTS_WARNING_PERCENT
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 80.0
