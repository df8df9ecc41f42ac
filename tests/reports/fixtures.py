"""Fixtures for the report tests: each test starts with empty daily meter hashes in the shared test Redis."""

import datetime as dt

import pytest

from hotcache import clock, keys, reports


def clear_meter_hashes(raw_redis):
    """Delete this run's meter hashes (by name, no scan) and the unflushed counts of this process."""
    from hotcache import metering

    today = clock.utcnow().date()
    names = [
        keys.tagged("meter", "usage", (today - dt.timedelta(days=i)).strftime("%Y%m%d"))
        for i in range(reports.MAX_DAYS + 1)
    ]
    raw_redis.delete(*names, keys.tagged("meter", "usage", "pools"))
    metering.meter.reset()


@pytest.fixture(autouse=True)
def empty_meter_hashes(raw_redis):
    """Each report test starts and ends with empty meters, so one test's workload is not another's."""
    clear_meter_hashes(raw_redis)
    yield
    clear_meter_hashes(raw_redis)
