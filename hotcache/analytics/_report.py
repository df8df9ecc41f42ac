"""report(): counts for a range of hours from MongoDB plus the counters still only in Redis.
See docs/analytics.md ("Public API").
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from hotcache.analytics._documents import hourly_collection, visitors_collection
from hotcache.analytics._events import DAY_FMT, label_to_day, label_to_hour, validate_event
from hotcache.analytics._records import Tally, batch_hour, day_counts, index_members, read_unsynced
from hotcache.backends import mongo
from hotcache.exceptions import BackendUnavailable, RedisUnavailable

__all__ = ["AnalyticsReport", "report"]

log = logging.getLogger("hotcache.analytics")

_TOP = 20


@dataclass(frozen=True, slots=True)
class AnalyticsReport:
    hourly: list[tuple[dt.datetime, int]]  # UTC hour start, total count
    daily: list[tuple[dt.date, int]]
    top_events: list[tuple[str, int]]  # descending, at most 20
    top_paths: list[tuple[str, int]]  # descending, at most 20
    visitors: list[tuple[str, dt.date, int]]  # event, day, distinct visitors
    unsynced: int  # counts still only in Redis (included in the totals above)


@dataclass(slots=True)
class _Totals:
    """The report's figures while MongoDB's and then Redis's counts are added up."""

    hourly: dict[dt.datetime, int]
    by_event: dict[str, int]
    by_path: dict[str, int]
    visitors: dict[tuple[str, str], int]  # (day label, event) -> distinct visitors


def _as_utc(value: dt.datetime | dt.date) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)


def report(start: dt.datetime | dt.date, end: dt.datetime | dt.date, event: str | None = None) -> AnalyticsReport:
    """Counts for hours in [start, end): MongoDB (4 queries) plus unsynced Redis counters (at most 4 round trips).

    A batch the sync has written but not yet released can be counted twice for that moment.
    """
    lo, hi = _as_utc(start), _as_utc(end)
    if event is not None:
        event = validate_event(event)
    coll = hourly_collection()  # outside the try: its first index creation fails loudly (as it always did)
    totals = _Totals({}, {}, {}, {})
    unsynced = 0
    try:
        _add_mongo(coll, lo, hi, event, totals)
    except BackendUnavailable as exc:
        log.warning("hotcache analytics: report without MongoDB figures: %s", exc)
    try:
        unsynced = _add_redis(lo, hi, event, totals)
    except RedisUnavailable as exc:
        log.warning("hotcache analytics: report without unsynced Redis counters: %s", exc)
    daily: dict[dt.date, int] = {}
    for hour, n in totals.hourly.items():
        daily[hour.date()] = daily.get(hour.date(), 0) + n

    def top(d: dict[str, int]) -> list[tuple[str, int]]:
        return sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))[:_TOP]

    return AnalyticsReport(
        hourly=sorted(totals.hourly.items()),
        daily=sorted(daily.items()),
        top_events=top(totals.by_event),
        top_paths=top(totals.by_path),
        visitors=sorted((e, label_to_day(d).date(), n) for (d, e), n in totals.visitors.items()),
        unsynced=unsynced,
    )


def _add_mongo(coll: mongo.Collection, lo: dt.datetime, hi: dt.datetime, event: str | None, totals: _Totals) -> None:
    """The synced figures: 3 aggregations on analytics_hourly (``coll``) and one find on analytics_visitors."""
    match: dict[str, Any] = {"hour": {"$gte": lo, "$lt": hi}}
    if event is not None:
        match["event"] = event
    for row in coll.aggregate([{"$match": match}, {"$group": {"_id": "$hour", "n": {"$sum": "$count"}}}]):
        totals.hourly[_as_utc(row["_id"])] = int(row["n"])
    for name, target in (("event", totals.by_event), ("path", totals.by_path)):
        rows = coll.aggregate(
            [
                {"$match": match},
                {"$group": {"_id": f"${name}", "n": {"$sum": "$count"}}},
                {"$sort": {"n": -1}},
                {"$limit": 5 * _TOP},  # headroom for Redis-only counts to move an entry into the top 20
            ]
        )
        target.update({str(r["_id"]): int(r["n"]) for r in rows})
    vmatch: dict[str, Any] = {"day": {"$gte": _as_utc(lo.date()), "$lt": hi}}
    if event is not None:
        vmatch["event"] = event
    for doc in visitors_collection().find(vmatch):
        totals.visitors[(_as_utc(doc["day"]).strftime(DAY_FMT), doc["event"])] = int(doc["count"])


def _add_redis(lo: dt.datetime, hi: dt.datetime, event: str | None, totals: _Totals) -> int:
    """The counters still only in Redis (live hours and pending batches) and the days' visitor estimates."""
    tally = Tally()
    until = f"({hi.timestamp()}"
    indexes = index_members(
        tally,
        hours=lambda pipe, key: pipe.zrangebyscore(key, lo.timestamp(), until),
        pending=lambda pipe, key: pipe.smembers(key),
        days=lambda pipe, key: pipe.zrangebyscore(key, _as_utc(lo.date()).timestamp(), until),
    )
    hours = indexes["hours"].good
    pending = [(b, x) for b, x in indexes["pending"].good if lo <= label_to_hour(batch_hour(x)) < hi]
    days = indexes["days"].good
    unsynced = 0
    for label, _, found in read_unsynced(hours, pending, tally):
        hour = label_to_hour(label)
        for (ev, path), n in found.items():
            if event is not None and ev != event:
                continue
            unsynced += n
            totals.hourly[hour] = totals.hourly.get(hour, 0) + n
            totals.by_event[ev] = totals.by_event.get(ev, 0) + n
            totals.by_path[path] = totals.by_path.get(path, 0) + n
    for (d, e), n in day_counts(days, tally)[0].items():
        if event is None or e == event:
            totals.visitors[(d, e)] = max(n, totals.visitors.get((d, e), 0))
    return unsynced
