"""The command budgets: billed commands today against REDIS_DAILY_COMMAND_BUDGET, the UTC month projected from
the days so far against REDIS_MONTHLY_COMMAND_BUDGET, and the server's own count beside the meter's."""

import datetime as dt
import logging
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from hotcache import keys, metering, reports
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import redis_gate
from hotcache.reports import _budget
from hotcache.testing import frozen_clock
from tests.reports.fixtures import empty_meter_hashes  # noqa: F401 - autouse


def day(name: str, billed: int) -> metering.DayUsage:
    u = metering.DayUsage(name)
    u.fields["billed:ratelimit"] = billed
    u.fields["cmd:ratelimit"] = billed // 4
    return u


def test_the_month_is_projected_from_the_days_so_far_at_the_same_pace():
    now = dt.datetime(2026, 11, 10, 12, tzinfo=dt.UTC)  # 9.5 days into a 30-day month
    days = [day("20261110", 500), day("20261109", 1000), day("20261101", 400), day("20261031", 99_999)]
    month = _budget.project_month(days, now)
    assert (month.month, month.to_date, month.days_in_month) == ("2026-11", 1900, 30)
    assert month.elapsed_days == 9.5 and month.projected == round(1900 * 30 / 9.5)


def test_the_first_hours_of_a_month_project_as_one_day():
    now = dt.datetime(2027, 2, 1, 2, tzinfo=dt.UTC)
    month = _budget.project_month([day("20270201", 300)], now)
    assert month.elapsed_days == 1 and month.projected == 300 * 28


def seed_meter(raw_redis, when: dt.date, billed: int) -> None:
    raw_redis.hset(keys.tagged("meter", "usage", when.strftime("%Y%m%d")), "billed:analytics", billed)


def test_the_overview_reads_the_whole_month_to_date_even_when_it_shows_fewer_days(raw_redis):
    with frozen_clock(dt.datetime(2026, 12, 20, 12, tzinfo=dt.UTC).timestamp()):
        seed_meter(raw_redis, dt.date(2026, 12, 2), 7000)  # 18 days ago: not shown, but this month
        seed_meter(raw_redis, dt.date(2026, 11, 30), 5000)  # last month
        seed_meter(raw_redis, dt.date(2026, 12, 19), 1000)
        ov = reports.overview(days=7)
    assert len(ov.days) == 7
    assert ov.month.to_date >= 8000 and ov.month.to_date < 9000  # plus the overview's own reads today
    assert ov.commands_month.value == ov.month.projected == round(ov.month.to_date * 31 / 19.5)
    assert ov.commands_month.setting == "REDIS_MONTHLY_COMMAND_BUDGET" and ov.commands_month.limit == 500_000
    assert not ov.commands_month.exceeded


def test_a_projection_over_the_monthly_budget_exits_non_zero_naming_it(raw_redis, hotcache_config):
    hotcache_config(REDIS_MONTHLY_COMMAND_BUDGET=10_000)
    with frozen_clock(dt.datetime(2026, 12, 11, tzinfo=dt.UTC).timestamp()):
        seed_meter(raw_redis, dt.date(2026, 12, 5), 4000)  # 10 days: 4,000 -> 12,400 by the 31st
        out = StringIO()
        with pytest.raises(CommandError, match="REDIS_MONTHLY_COMMAND_BUDGET") as exc:
            call_command("hotcache_status", stdout=out)
    assert exc.value.returncode == 1
    text = out.getvalue()
    assert "Redis billed commands this month, projected" in text and "EXCEEDED" in text
    assert "REDIS_DAILY_COMMAND_BUDGET" not in str(exc.value)  # today is within its budget


def test_status_shows_billed_beside_round_trips_and_the_servers_own_count():
    redis_backend.call("ratelimit", lambda r: r.exists("hc-billed-probe"))
    assert metering.flush()
    out = StringIO()
    call_command("hotcache_status", stdout=out)
    text = out.getvalue()
    assert "Redis billed commands today" in text and "round trips" in text
    assert "hotcache's own connections only" in text
    line = next(s for s in text.splitlines() if s.startswith("Redis server, billed commands"))
    assert int(line.split()[4].replace(",", "")) > 0 and "INFO commandstats" in line
    ov = reports.overview()
    assert ov.server_commands.billed is not None and ov.server_commands.billed >= ov.commands_today.value


def test_a_server_without_info_commandstats_is_handled_quietly(fake_redis, caplog):
    redis_backend.call("ratelimit", lambda r: r.exists("hc-billed-probe"))
    with caplog.at_level(logging.INFO, logger="hotcache"):
        ov = reports.overview()
    assert ov.redis_available and redis_gate.state == "closed"
    assert ov.server_commands.billed is None and "not allowed or not supported" in ov.server_commands.note
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
