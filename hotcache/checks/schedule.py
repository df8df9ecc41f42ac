"""System checks for the periodic jobs (E080-E089, W080-W089): something must run each enabled sync.

Analytics, API-key usage and workbench sessions keep their newest data in Redis with a TTL; a job moves it
to MongoDB. ``HOTCACHE['SYNC_SCHEDULER']`` says what runs the jobs: ``"celery"`` (default), Celery beat, whose
entries these checks read (settings and each Celery app's conf, never a connection); ``"cron"``, something
outside Celery (cron, a systemd timer, a Kubernetes CronJob) runs the management commands, which the checks
cannot see and trust. See README.md ("Schedule the syncs").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, Warning, register

from hotcache.checks._common import (
    BeatEntry,
    beat_entries,
    celery_state,
    database_scheduler,
    is_number,
    schedule_seconds,
)
from hotcache.checks._common import (
    setting as _setting,
)
from hotcache.conf import hotcache_settings

__all__ = ["JOBS", "SCHEDULERS", "Job", "check_schedule"]

SCHEDULERS = ("celery", "cron")


def _number(name: str, default: float) -> float:
    """A numeric setting for a message; its own check reports a bad value, so fall back to the default here."""
    value = getattr(hotcache_settings, name)
    return float(value) if is_number(value) and value >= 0 else default


def _analytics_minute() -> int:
    """The minute past the hour the analytics sync runs: after ANALYTICS_SYNC_GRACE has closed the last hour."""
    return min(59, max(5, math.ceil(_number("ANALYTICS_SYNC_GRACE", 300) / 60)))


def _every_minutes() -> int:
    """Workbench: a whole number of minutes dividing the hour, not above WORKBENCH_PERSIST_INTERVAL (cron's
    finest step is a minute)."""
    minutes = int(_number("WORKBENCH_PERSIST_INTERVAL", 300) // 60)
    return max(d for d in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60) if d <= max(1, minutes))


def _cron_step(minutes: int) -> str:
    return "*" if minutes == 1 else ("0" if minutes == 60 else f"*/{minutes}")


@dataclass(frozen=True, slots=True)
class Job:
    """One periodic job: the feature that needs it, its Celery task and beat entry, its command and cron line."""

    feature: str  # the HOTCACHE['FEATURES'] name that enables it
    title: str
    task: str
    entry: str  # the beat entry name the README and config/settings/base.py use
    command: str  # manage.py command (and arguments)
    beat: Callable[[], str]  # the entry's schedule, as settings source
    cron: Callable[[], str]  # the five crontab fields
    lost: Callable[[], str]  # what expires unsynced, naming the settings
    longest_gap: Callable[[BeatEntry], tuple[float, str] | None]  # the largest safe wait between runs, and why


def _analytics_lost() -> str:
    hours = hotcache_settings.ANALYTICS_RETENTION_HOURS
    return (
        f"Tracked analytics counters not moved to MongoDB within {_setting('ANALYTICS_RETENTION_HOURS')}={hours!r} "
        "hours expire from Redis and are lost"
    )


def _analytics_gap(entry: BeatEntry) -> tuple[float, str] | None:
    # An hour's counter may be written only at the hour's start (its TTL runs from its last write), and the sync
    # claims the hour ANALYTICS_SYNC_GRACE after it ends.
    retention = _number("ANALYTICS_RETENTION_HOURS", 168) * 3600
    limit = retention - 3600 - _number("ANALYTICS_SYNC_GRACE", 300)
    return limit, (
        f"an hour's counters expire {limit:g} s after the sync may first claim them "
        f"({_setting('ANALYTICS_RETENTION_HOURS')} less the hour and {_setting('ANALYTICS_SYNC_GRACE')})"
    )


def _usage_lost() -> str:
    days = hotcache_settings.APIKEY_USAGE_RETENTION_DAYS
    return (
        f"API keys' daily usage counters expire from Redis after {_setting('APIKEY_USAGE_RETENTION_DAYS')}="
        f"{days!r} days without reaching MongoDB's usage history, and uses counted on MongoDB during a Redis "
        "outage are never pushed back into the daily limits"
    )


def _usage_gap(entry: BeatEntry) -> tuple[float, str] | None:
    days = entry.kwargs.get("days", entry.args[0] if entry.args else 2)
    if not is_number(days, integer=True) or days < 1:
        return None  # the task refuses it with ValueError: a failure the worker reports
    if days == 1:
        return 0.0, "with days=1 it copies only the current UTC day, so each day's last uses are never copied"
    covered = min(days, int(_number("APIKEY_USAGE_RETENTION_DAYS", 30)))
    if covered < 2:
        return None  # a retention of 1 day: hotcache.E040 (checks/apikeys.py)
    limit = (covered - 1) * 86400.0
    return limit, (
        f"with days={days} a finished UTC day is copied only during the next {covered - 1} day(s)"
        + (f" ({_setting('APIKEY_USAGE_RETENTION_DAYS')} bounds the window)" if covered < days else "")
    )


def _workbench_lost() -> str:
    ended = hotcache_settings.WORKBENCH_ENDED_TTL
    idle = hotcache_settings.WORKBENCH_IDLE_TIMEOUT
    return (
        f"Ended workbench sessions expire from Redis after {_setting('WORKBENCH_ENDED_TTL')}={ended!r} s and "
        f"abandoned ones after {_setting('WORKBENCH_IDLE_TIMEOUT')}={idle!r} s without reaching MongoDB's "
        "workbench_history"
    )


JOBS = (
    Job(
        feature="analytics",
        title="the analytics sync",
        task="hotcache.tasks.sync_analytics",
        entry="hotcache-sync-analytics",
        command="sync_analytics",
        beat=lambda: f"crontab(minute={_analytics_minute()})",
        cron=lambda: f"{_analytics_minute()} * * * *",
        lost=_analytics_lost,
        longest_gap=_analytics_gap,
    ),
    Job(
        feature="apikeys",
        title="the API-key usage sync",
        task="hotcache.tasks.sync_apikey_usage",
        entry="hotcache-sync-apikey-usage",
        command="sync_apikey_usage",
        beat=lambda: "600.0",
        cron=lambda: "*/10 * * * *",
        lost=_usage_lost,
        longest_gap=_usage_gap,
    ),
    Job(
        feature="workbench",
        title="the workbench persister",
        task="hotcache.tasks.persist_workbench_sessions",
        entry="hotcache-persist-workbench-sessions",
        command="persist_workbench",
        beat=lambda: f"{_number('WORKBENCH_PERSIST_INTERVAL', 300):g}",
        cron=lambda: f"{_cron_step(_every_minutes())} * * * *",
        lost=_workbench_lost,
        longest_gap=lambda entry: None,  # hotcache.E054 (checks/workbench.py) holds it to WORKBENCH_PERSIST_INTERVAL
    ),
)


def _scheduler_error(value: object) -> Error:
    return Error(
        f"{_setting('SYNC_SCHEDULER')}={value!r} is not 'celery' or 'cron'.",
        hint="Use 'celery' (default: Celery beat runs hotcache.tasks.*, and these checks look for its entries) or "
        "'cron' (cron or another scheduler runs manage.py sync_analytics, sync_apikey_usage and persist_workbench; "
        "see README.md, 'Schedule the syncs').",
        id="hotcache.E080",
    )


def _unscheduled(job: Job, have_celery: bool) -> Warning:
    why = (
        "no Celery beat entry runs" if have_celery else "Celery is not installed and no CELERY_BEAT_SCHEDULE entry runs"
    )
    install = "" if have_celery else " (after pip install 'hotcache[celery]')"
    return Warning(
        f"Nothing schedules {job.title}: {why} the task {job.task!r}, and {_setting('SYNC_SCHEDULER')} is not "
        f"'cron'. {job.lost()}.",
        hint=f"Add the beat entry CELERY_BEAT_SCHEDULE[{job.entry!r}] = {{'task': {job.task!r}, 'schedule': "
        f"{job.beat()}}}{install}; or run the command from cron, '{job.cron()} cd /path/to/project && python "
        f"manage.py {job.command}', and set {_setting('SYNC_SCHEDULER')} = 'cron'. See README.md, "
        "'Schedule the syncs'.",
        id="hotcache.W080",
    )


def _too_slow(job: Job, entry: BeatEntry, seconds: float, limit: float, why: str) -> Error:
    entry_text = f"{{'task': {job.task!r}, 'schedule': {job.beat()}}}"
    if limit <= 0:
        return Error(
            f"{entry.where} runs {job.task}, but {why}: they expire from Redis without reaching MongoDB.",
            hint="Let it copy at least 2 days: drop 'days' from the entry's args/kwargs (default 2), as in "
            f"{entry_text}.",
            id="hotcache.E081",
        )
    return Error(
        f"{entry.where} waits up to {seconds:g} s between runs of {job.task}, but {why}: data expires from Redis "
        "before it runs.",
        hint=f"Schedule it at least every {limit:g} s (hotcache's entry: {entry_text}), or raise the setting "
        "named above.",
        id="hotcache.E081",
    )


@register(Tags.compatibility)
def check_schedule(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E080 unknown SYNC_SCHEDULER; W080 an enabled job nothing schedules; E081 a beat entry too slow for its data."""
    scheduler = hotcache_settings.SYNC_SCHEDULER
    errors: list[CheckMessage] = []
    if scheduler not in SCHEDULERS:
        errors.append(_scheduler_error(scheduler))
    jobs = [job for job in JOBS if hotcache_settings.enabled(job.feature)]
    entries = beat_entries()
    for job in jobs:
        for entry in (e for e in entries if e.task == job.task):
            seconds = schedule_seconds(entry.schedule)
            bound = job.longest_gap(entry)
            if seconds is not None and bound is not None and seconds > bound[0]:
                errors.append(_too_slow(job, entry, seconds, *bound))
    if scheduler != "celery" or database_scheduler() is not None:
        # cron: the checks cannot see a crontab. django-celery-beat: its entries live in a table a system check
        # does not query (checks connect to nothing).
        return errors
    have_celery = celery_state() is not None
    scheduled = {e.task for e in entries}
    errors += [_unscheduled(job, have_celery) for job in jobs if job.task not in scheduled]
    return errors
