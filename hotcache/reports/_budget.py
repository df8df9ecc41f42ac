"""The Redis command budgets: billed commands today against REDIS_DAILY_COMMAND_BUDGET, the UTC month's end
projected from the days so far against REDIS_MONTHLY_COMMAND_BUDGET, and the server's own count (INFO
commandstats) beside the meter's. See docs/operations/budgets.md#the-budgets."""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from hotcache import metering
from hotcache.conf import hotcache_settings
from hotcache.reports._figures import Gauge

__all__ = [
    "MonthProjection",
    "ServerCommands",
    "daily_gauge",
    "month_days",
    "monthly_gauge",
    "project_month",
    "server_commands",
]

METER_SCOPE = (
    "the meter counts hotcache's own connections only: the Celery broker, the host's cache and any other "
    "client of this Redis are billed too"
)


@dataclass(frozen=True, slots=True)
class MonthProjection:
    """Billed commands of the UTC month so far and where they lead at the same pace."""

    month: str  # YYYY-MM
    to_date: int  # billed commands from the 1st 00:00 UTC to now
    elapsed_days: float  # days since the 1st 00:00 UTC, counted as at least 1 (a month's first hours project alone)
    days_in_month: int
    projected: int  # to_date * days_in_month / elapsed_days

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ServerCommands:
    """What the server says it executed (INFO commandstats, every client): None where INFO is refused."""

    billed: int | None  # billed commands since the server started or its stats were reset
    uptime_days: float | None
    note: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def month_days(now: dt.datetime) -> int:
    """How many days (newest first, today included) cover the month to date."""
    return now.day


def project_month(days: list[metering.DayUsage], now: dt.datetime) -> MonthProjection:
    """The month to date from the meter's days (any order; days of other months ignored), projected to its end.

    Projection = to date x days in the month / days elapsed (at least 1): a steady pace continued. The floor
    of one day keeps the first hours of a month from projecting a handful of commands thirty-fold.
    """
    prefix = now.strftime("%Y%m")
    to_date = sum(d.billed for d in days if d.day.startswith(prefix))
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    elapsed = max(1.0, (now - start).total_seconds() / 86400)
    length = calendar.monthrange(now.year, now.month)[1]
    return MonthProjection(now.strftime("%Y-%m"), to_date, round(elapsed, 3), length, round(to_date * length / elapsed))


def daily_gauge(today: metering.DayUsage, warn: float, note: str = "") -> Gauge:
    """Billed commands today (UTC) against REDIS_DAILY_COMMAND_BUDGET; exceeded above it."""
    detail = f"{today.round_trips:,} round trips, {today.commands:,} commands sent; {METER_SCOPE}"
    return Gauge(
        "Redis billed commands today",
        today.billed,
        int(hotcache_settings.REDIS_DAILY_COMMAND_BUDGET),
        "REDIS_DAILY_COMMAND_BUDGET",
        warn,
        note=f"{note}; {detail}" if note else detail,
    )


def monthly_gauge(month: MonthProjection, warn: float, note: str = "") -> Gauge:
    """The month's projected billed commands against REDIS_MONTHLY_COMMAND_BUDGET; exceeded above it."""
    detail = (
        f"{month.to_date:,} billed in {month.month} so far ({month.elapsed_days:.1f} of {month.days_in_month} days), "
        "projected at the same pace"
    )
    return Gauge(
        "Redis billed commands this month, projected",
        month.projected,
        int(hotcache_settings.REDIS_MONTHLY_COMMAND_BUDGET),
        "REDIS_MONTHLY_COMMAND_BUDGET",
        warn,
        note=f"{note}; {detail}" if note else detail,
    )


def server_commands(commandstats: dict[str, Any] | None, server: dict[str, Any] | None) -> ServerCommands:
    """The server's billed total from its INFO commandstats and INFO server sections (None: not allowed)."""
    if not commandstats:
        return ServerCommands(None, None, "INFO commandstats not allowed or not supported by this server")
    uptime = server.get("uptime_in_seconds") if server else None
    days = round(int(uptime) / 86400, 2) if isinstance(uptime, int | str) and str(uptime).isdigit() else None
    since = f"in the {days:,} days since it started (or CONFIG RESETSTAT)" if days is not None else "since it started"
    return ServerCommands(
        metering.server_billed(commandstats),
        days,
        f"every client's billed commands {since}, per INFO commandstats",
    )
