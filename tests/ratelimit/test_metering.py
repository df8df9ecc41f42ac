"""The metering day (cached per UTC day for the hot path the rate limiter runs on every request)."""

import datetime as dt

from hotcache import metering


def test_events_land_in_the_utc_day_they_happened_on_across_midnight(clock):
    midnight = dt.datetime(2031, 5, 6, tzinfo=dt.UTC).timestamp()
    clock.advance(midnight - 0.25 - clock.time())
    metering.event("ratelimit", "allowed")
    clock.advance(0.5)
    metering.event("ratelimit", "allowed")
    clock.advance(-86400)  # a clock stepping back a day (to 05-05 00:00:00.25) is honoured too
    metering.event("ratelimit", "allowed")
    pending = metering.meter.pending()
    assert pending[("20310505", "ev:ratelimit:allowed")] == 2
    assert pending[("20310506", "ev:ratelimit:allowed")] == 1
