"""What every check module shares: how a setting is named in a message, number checks, schedule reading."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error

from hotcache.conf import DEFAULTS, hotcache_settings

__all__ = [
    "MONGO_FEATURES",
    "PREFIX",
    "BeatEntry",
    "beat_entries",
    "database_scheduler",
    "is_number",
    "number_setting_errors",
    "range_errors",
    "schedule_seconds",
    "setting",
    "settings_module",
]

MONGO_FEATURES = ("mfa", "apikeys", "workbench", "analytics")
PREFIX = re.compile(r"[A-Za-z0-9_.\-]{1,32}")


def setting(name: str) -> str:
    return f"HOTCACHE[{name!r}]"


def is_number(value: object, *, integer: bool = False) -> bool:
    """A number (a whole one with ``integer``) as a setting may hold it: True and False are ints to Python, never
    a number of seconds, days or items here."""
    return isinstance(value, int if integer else int | float) and not isinstance(value, bool)


def number_setting_errors(
    names: tuple[str, ...], *, minimum: float = 0, integer: bool = False, allow_zero: bool = False
) -> list[CheckMessage]:
    """hotcache.E004 for every named setting that is not a positive number (or int)."""
    errors: list[CheckMessage] = []
    for name in names:
        value = getattr(hotcache_settings, name)
        ok = is_number(value, integer=integer)
        if ok:
            ok = value >= minimum if allow_zero else value > minimum
        if not ok:
            errors.append(
                Error(
                    f"{setting(name)}={value!r} is not a valid value.",
                    hint=f"Use a {'whole ' if integer else ''}number greater than {minimum}"
                    f"{' or equal to it' if allow_zero else ''} (default {DEFAULTS[name]!r}).",
                    id="hotcache.E004",
                )
            )
    return errors


def range_errors(
    name: str, low: float, high: float, problem: str, *, hint: str, check_id: str, integer: bool = True
) -> list[CheckMessage]:
    """``check_id`` naming the setting and its value ("HOTCACHE['NAME']=value <problem>") when it is not a number
    (a whole one unless ``integer`` is False) from ``low`` to ``high``."""
    value = getattr(hotcache_settings, name)
    if is_number(value, integer=integer) and low <= value <= high:
        return []
    return [Error(f"{setting(name)}={value!r} {problem}", hint=hint, id=check_id)]


def settings_module() -> str:
    return os.environ.get("DJANGO_SETTINGS_MODULE", "")


def schedule_seconds(schedule: Any) -> float | None:
    """The longest wait between two runs of a beat schedule, in seconds; None when it cannot be told (solar)."""
    if is_number(schedule):
        return float(schedule)
    if hasattr(schedule, "total_seconds"):
        return float(schedule.total_seconds())
    run_every = getattr(schedule, "run_every", None)  # celery.schedules.schedule
    if run_every is not None:
        return float(run_every.total_seconds())
    return _crontab_longest_gap(schedule)


# Four years from a Monday, 1 January: every weekday/day-of-month/month combination and one 29 February.
_CRON_SPAN_START = dt.date(2024, 1, 1)
_CRON_SPAN_DAYS = 4 * 366


def _crontab_longest_gap(schedule: Any) -> float | None:
    """The longest gap between two runs of a celery.schedules.crontab (read by its expanded fields, so Celery
    need not be imported), in seconds. Celery runs a crontab when the day of the week AND the day of the month
    AND the month match; a schedule matching fewer than two days in four years counts as four years."""
    fields = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
    sets: list[set[int] | frozenset[int]] = []
    for name in fields:
        values = getattr(schedule, name, None)
        if not isinstance(values, set | frozenset) or not values:
            return None  # not a crontab (a solar schedule, a custom class): not judged
        sets.append(values)
    minutes, hours, weekdays, month_days, months = sets
    times = sorted(h * 60 + m for h in hours for m in minutes)  # minutes after midnight
    if len(weekdays) == 7 and len(month_days) == 31 and len(months) == 12:  # every day (the usual case)
        within = max((b - a for a, b in itertools.pairwise(times)), default=0)
        return float(max(within, 1440 + times[0] - times[-1]) * 60)
    days = [
        i
        for i in range(_CRON_SPAN_DAYS)
        if (d := _CRON_SPAN_START + dt.timedelta(days=i)).month in months
        and d.day in month_days
        and d.isoweekday() % 7 in weekdays  # Celery: 0 is Sunday
    ]
    if len(days) < 2:
        return _CRON_SPAN_DAYS * 86400.0
    within = max((b - a for a, b in itertools.pairwise(times)), default=0)
    across = max((b - a) * 1440 + times[0] - times[-1] for a, b in itertools.pairwise(days))
    return float(max(within, across) * 60)


# --- beat entries ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BeatEntry:
    """One Celery beat entry: where it was found (for messages), its task name, schedule and arguments."""

    where: str  # "CELERY_BEAT_SCHEDULE['name']" or "<app>.conf.beat_schedule['name']"
    name: str
    task: str
    schedule: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def celery_state() -> ModuleType | None:
    """Celery's registry of apps, or None when Celery is not installed (it is the extra hotcache[celery]).

    The one place the checks import Celery; importing it connects to nothing.
    """
    try:
        from celery import _state
    except ImportError:
        return None
    return _state


def _celery_apps() -> list[Any]:
    """The Celery apps created in this process (a Django project imports its app at startup)."""
    state = celery_state()
    if state is None:
        return []
    apps = list(getattr(state, "_apps", ()))  # Celery's weak set of every app; private, hence the fallback
    default = getattr(state, "default_app", None)
    if not apps and default is not None:
        apps = [default]
    return apps


def _app_setting(app: Any, name: str) -> Any:
    """A Celery app's setting, or None when its configuration does not load (it then offers no entries)."""
    try:
        return getattr(app.conf, name, None)
    except Exception:  # the app's own config module may fail to import: that is its check, not ours
        return None


def _entries(source: object, where: str) -> list[BeatEntry]:
    if not isinstance(source, dict):
        return []
    found = []
    for name, entry in source.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("task"), str):
            continue
        args = entry.get("args") or ()
        kwargs = entry.get("kwargs") or {}
        found.append(
            BeatEntry(
                where=f"{where}[{name!r}]",
                name=str(name),
                task=entry["task"],
                schedule=entry.get("schedule"),
                args=tuple(args) if isinstance(args, list | tuple) else (),
                kwargs=dict(kwargs) if isinstance(kwargs, dict) else {},
            )
        )
    return found


def beat_entries() -> list[BeatEntry]:
    """Every Celery beat entry hotcache can see without connecting to anything: the settings'
    CELERY_BEAT_SCHEDULE (and the old CELERYBEAT_SCHEDULE), then each Celery app's conf.beat_schedule
    (entries an app sets in code). An entry found in both is listed once."""
    found = _entries(getattr(settings, "CELERY_BEAT_SCHEDULE", None), "CELERY_BEAT_SCHEDULE")
    found += _entries(getattr(settings, "CELERYBEAT_SCHEDULE", None), "CELERYBEAT_SCHEDULE")
    for app in _celery_apps():
        where = f"{getattr(app, 'main', None) or 'celery'}.conf.beat_schedule"
        found += _entries(_app_setting(app, "beat_schedule"), where)
    unique: dict[tuple[str, str, str], BeatEntry] = {}
    for entry in found:
        unique.setdefault((entry.name, entry.task, repr(entry.schedule)), entry)
    return list(unique.values())


def database_scheduler() -> str | None:
    """The beat scheduler's path when it keeps entries in a database (django-celery-beat), else None.

    Its entries cannot be read by a system check without a database query, so the checks trust them.
    """
    names = [getattr(settings, "CELERY_BEAT_SCHEDULER", None)]
    names += [_app_setting(app, "beat_scheduler") for app in _celery_apps()]
    for name in names:
        path = name if isinstance(name, str) else f"{getattr(name, '__module__', '')}.{getattr(name, '__name__', '')}"
        if "django_celery_beat" in path:
            return path
    return None
