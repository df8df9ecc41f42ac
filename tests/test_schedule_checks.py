"""The schedule check (hotcache.W080, E080, E081): an enabled sync that nothing runs is named with what it loses
and both fixes; a beat entry (settings or a Celery app) or SYNC_SCHEDULER = "cron" satisfies it; it works
without Celery; the project's own settings pass."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery
from celery.schedules import crontab

from hotcache.checks import check_schedule, check_workbench
from hotcache.checks._common import schedule_seconds
from hotcache.checks.schedule import JOBS

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {  # config/settings/base.py's entries, one per job
    "hotcache.tasks.sync_analytics": "hotcache-sync-analytics",
    "hotcache.tasks.sync_apikey_usage": "hotcache-sync-apikey-usage",
    "hotcache.tasks.persist_workbench_sessions": "hotcache-persist-workbench-sessions",
}


def ids():
    return sorted(m.id for m in check_schedule())


def _without(settings, task):
    settings.CELERY_BEAT_SCHEDULE = {k: v for k, v in settings.CELERY_BEAT_SCHEDULE.items() if v["task"] != task}


def test_the_test_settings_schedule_every_job(settings):
    assert set(SHIPPED) == {e["task"] for e in settings.CELERY_BEAT_SCHEDULE.values()}
    assert check_schedule() == []


@pytest.mark.parametrize("job", JOBS, ids=lambda j: j.feature)
def test_an_enabled_job_without_a_schedule_is_named_with_what_it_loses_and_both_fixes(settings, job):
    _without(settings, job.task)
    [warning] = check_schedule()
    assert warning.id == "hotcache.W080"
    assert job.title in warning.msg and job.task in warning.msg and "SYNC_SCHEDULER" in warning.msg
    lost = {
        "analytics": "ANALYTICS_RETENTION_HOURS']=168 hours",
        "apikeys": "APIKEY_USAGE_RETENTION_DAYS']=30 days",
        "workbench": "WORKBENCH_ENDED_TTL']=86400 s",
    }[job.feature]
    assert lost in warning.msg
    # Fix 1: the beat entry, by name and task path; fix 2: the crontab line and the setting.
    assert f"CELERY_BEAT_SCHEDULE[{SHIPPED[job.task]!r}]" in warning.hint and f"'task': {job.task!r}" in warning.hint
    assert f"python manage.py {job.command}'" in warning.hint and "SYNC_SCHEDULER'] = 'cron'" in warning.hint


def test_the_hint_shows_the_cron_timing_each_job_needs(settings, hotcache_config):
    settings.CELERY_BEAT_SCHEDULE = {}
    hotcache_config(WORKBENCH_PERSIST_INTERVAL=420)  # 7 minutes: cron's nearest step that is not slower is 6
    hints = {m.msg.split(":")[0]: m.hint for m in check_schedule()}
    assert (
        "'5 * * * * cd /path/to/project && python manage.py sync_analytics'"
        in hints["Nothing schedules the analytics sync"]
    )
    assert (
        "'*/10 * * * * cd /path/to/project && python manage.py sync_apikey_usage'"
        in hints["Nothing schedules the API-key usage sync"]
    )
    assert (
        "'*/6 * * * * cd /path/to/project && python manage.py persist_workbench'"
        in hints["Nothing schedules the workbench persister"]
    )
    assert "'schedule': 420}" in hints["Nothing schedules the workbench persister"]


def test_a_disabled_feature_needs_no_schedule(settings, hotcache_config):
    settings.CELERY_BEAT_SCHEDULE = {}
    hotcache_config(FEATURES=["ratelimit", "users", "mfa"])
    assert check_schedule() == []


def test_declared_cron_satisfies_the_check(settings, hotcache_config):
    settings.CELERY_BEAT_SCHEDULE = {}
    hotcache_config(SYNC_SCHEDULER="cron")
    assert check_schedule() == []


def test_an_entry_a_celery_app_sets_in_code_counts(settings):
    settings.CELERY_BEAT_SCHEDULE = {}
    app = Celery("elsewhere", set_as_current=False)  # configured in code, not from Django settings
    app.conf.beat_schedule = {name: {"task": task, "schedule": 300.0} for task, name in SHIPPED.items()}
    try:
        assert check_schedule() == []
    finally:
        app.conf.beat_schedule = {}  # the app outlives the test until garbage collection: leave it empty


def test_entries_in_django_celery_beat_s_table_are_trusted(settings):
    """Its entries live in a database table; a system check connects to nothing, so it cannot read them."""
    settings.CELERY_BEAT_SCHEDULE = {}
    settings.CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
    assert check_schedule() == []


@pytest.fixture
def no_celery(monkeypatch):
    """The check's own import of Celery fails, as where the hotcache[celery] extra is not installed."""
    monkeypatch.setitem(sys.modules, "celery", None)


def test_without_celery_settings_entries_still_count(no_celery):
    assert check_schedule() == []


def test_without_celery_the_warning_says_so_and_offers_cron(settings, no_celery):
    settings.CELERY_BEAT_SCHEDULE = {}
    warnings = check_schedule()
    assert [w.id for w in warnings] == ["hotcache.W080"] * 3
    assert all("Celery is not installed" in w.msg for w in warnings)
    assert all("pip install 'hotcache[celery]'" in w.hint and "manage.py" in w.hint for w in warnings)


def test_without_celery_declared_cron_passes(settings, hotcache_config, no_celery):
    settings.CELERY_BEAT_SCHEDULE = {}
    hotcache_config(SYNC_SCHEDULER="cron")
    assert check_schedule() == []


@pytest.mark.parametrize("value", ["Cron", "beat", None, 1])
def test_an_unknown_scheduler_is_an_error_naming_the_setting(hotcache_config, value):
    hotcache_config(SYNC_SCHEDULER=value)
    [error] = check_schedule()
    assert error.id == "hotcache.E080" and "HOTCACHE['SYNC_SCHEDULER']" in error.msg and repr(value) in error.msg
    assert "'celery'" in error.hint and "'cron'" in error.hint


# --- a schedule slower than the data it moves lives ---


@pytest.mark.parametrize(
    "schedule", [dt.timedelta(days=8), crontab(minute=0, hour=0, day_of_week=1)], ids=["8 days", "weekly crontab"]
)
def test_an_analytics_sync_slower_than_the_counters_retention(settings, schedule):
    settings.CELERY_BEAT_SCHEDULE = {
        **settings.CELERY_BEAT_SCHEDULE,
        "hotcache-sync-analytics": {"task": "hotcache.tasks.sync_analytics", "schedule": schedule},
    }
    [error] = check_schedule()
    assert error.id == "hotcache.E081" and "ANALYTICS_RETENTION_HOURS" in error.msg
    assert "CELERY_BEAT_SCHEDULE['hotcache-sync-analytics']" in error.msg


def test_a_daily_analytics_sync_fits_the_default_retention(settings):
    settings.CELERY_BEAT_SCHEDULE = {
        **settings.CELERY_BEAT_SCHEDULE,
        "hotcache-sync-analytics": {"task": "hotcache.tasks.sync_analytics", "schedule": crontab(minute=5, hour=2)},
    }
    assert check_schedule() == []


def test_a_shorter_retention_makes_a_daily_sync_too_slow(settings, hotcache_config):
    hotcache_config(ANALYTICS_RETENTION_HOURS=24)
    settings.CELERY_BEAT_SCHEDULE = {
        **settings.CELERY_BEAT_SCHEDULE,
        "hotcache-sync-analytics": {"task": "hotcache.tasks.sync_analytics", "schedule": crontab(minute=5, hour=2)},
    }
    assert ids() == ["hotcache.E081"]


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"schedule": dt.timedelta(days=2)}, "copied only during the next 1 day(s)"),
        ({"schedule": 600.0, "kwargs": {"days": 1}}, "with days=1 it copies only the current UTC day"),
        ({"schedule": 600.0, "args": [1]}, "with days=1"),
    ],
)
def test_a_usage_sync_that_misses_a_finished_day(settings, entry, says):
    settings.CELERY_BEAT_SCHEDULE = {
        **settings.CELERY_BEAT_SCHEDULE,
        "hotcache-sync-apikey-usage": {"task": "hotcache.tasks.sync_apikey_usage", **entry},
    }
    [error] = check_schedule()
    assert error.id == "hotcache.E081" and says in error.msg


def test_a_wider_usage_window_allows_a_slower_schedule(settings):
    settings.CELERY_BEAT_SCHEDULE = {
        **settings.CELERY_BEAT_SCHEDULE,
        "hotcache-sync-apikey-usage": {
            "task": "hotcache.tasks.sync_apikey_usage",
            "schedule": dt.timedelta(days=2),
            "kwargs": {"days": 3},
        },
    }
    assert check_schedule() == []


def test_a_crontab_workbench_entry_slower_than_the_persist_interval(settings):
    settings.CELERY_BEAT_SCHEDULE = {
        "wb": {"task": "hotcache.tasks.persist_workbench_sessions", "schedule": crontab(minute="*/10")}
    }
    [error] = check_workbench()
    assert error.id == "hotcache.E054" and "600 s" in error.msg


@pytest.mark.parametrize(
    ("schedule", "seconds"),
    [
        (crontab(minute=5), 3600),
        (crontab(), 60),
        (crontab(minute="*/15", hour="9-17"), 15 * 3600 + 15 * 60),  # 17:45 -> 09:00
        (crontab(minute=0, hour=0, day_of_week="mon-fri"), 3 * 86400),  # Friday -> Monday
        (crontab(minute=0, hour=0, day_of_month=31), 61 * 86400),  # 31 August -> 31 October
        (dt.timedelta(minutes=5), 300),
        (30, 30),
    ],
)
def test_the_longest_wait_between_runs(schedule, seconds):
    assert schedule_seconds(schedule) == seconds


# --- the project's own settings ---


@pytest.mark.parametrize("module", ["config.settings.demo", "config.settings.e2e"])
def test_the_project_settings_schedule_every_job(module, tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": module,
        "REDIS_URL": "redis://127.0.0.1:6379/9",
        "MONGO_URL": "mongodb://127.0.0.1:1/hotcache",  # never contacted: checks connect to nothing
        "DJANGO_DB_PATH": str(tmp_path / "db.sqlite3"),
    }
    out = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for check_id in ("hotcache.W080", "hotcache.E080", "hotcache.E081", "hotcache.E054"):
        assert check_id not in out.stdout + out.stderr


def test_the_readme_shows_the_cron_line_and_the_beat_entry_the_warning_names():
    """What W080's hint offers is what README.md's installation step shows, for teams with and without Celery."""
    readme = (ROOT / "README.md").read_text()
    cron_lines = [line.strip() for line in readme.splitlines() if "manage.py" in line and "cd /srv/" in line]
    for job in JOBS:
        assert any(
            line.startswith(job.cron()) and line.split("manage.py ")[1].split()[0] == job.command for line in cron_lines
        ), job.command
        assert f'"{SHIPPED[job.task]}": {{"task": "{job.task}"' in readme
    assert '"SYNC_SCHEDULER": "cron"' in readme and "| `SYNC_SCHEDULER` |" in readme
