"""Command metering: how many Redis commands (and MongoDB operations) hotcache spends, per feature and UTC day.

Counting happens on hotcache's own Redis connections (every command the wire carries, handshakes
included), attributed to the feature running the call. Counts are buffered in-process and written
with a single command per flush (one EVALSHA holding every field), after METER_FLUSH_EVERY
commands, or at most once a minute when at least 100 are buffered, so metering costs well under 1%
extra commands. The daily hash ``<prefix>:meter:<YYYYMMDD>`` keeps fields:

    cmd:<feature>   Redis commands          rt:<feature>    Redis round trips
    mongo:<feature> MongoDB operations      ev:<feature>:<name>  feature events (hits, denials, fallbacks)
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hotcache import clock

__all__ = [
    "DayUsage",
    "MeterRead",
    "current_feature",
    "event",
    "feature",
    "flush",
    "meter",
    "mongo_op",
    "read",
    "snapshot",
    "usage",
]

log = logging.getLogger("hotcache.metering")

_feature: contextvars.ContextVar[str] = contextvars.ContextVar("hotcache_feature", default="other")
_METER_TTL = 40 * 86400  # a little over the 30 days the reports show
_TIME_FLUSH_SECONDS = 60.0
_TIME_FLUSH_MINIMUM = 100  # a time-based flush only when it costs <= 1% of what it reports


def current_feature() -> str:
    return _feature.get()


@contextlib.contextmanager
def feature(name: str) -> Iterator[None]:
    """Attribute the Redis commands sent inside this block to ``name``."""
    token = _feature.set(name)
    try:
        yield
    finally:
        _feature.reset(token)


_day_cache: tuple[int, str] = (-1, "")


def _day() -> str:
    # Called for every metered command and event: format the date once per UTC day, not per call
    # (POSIX time has exactly 86400 s per UTC day, so floor(t / 86400) names the day).
    global _day_cache
    t = clock.time()
    number = int(t // 86400)
    cached = _day_cache
    if cached[0] != number:
        cached = _day_cache = (number, dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y%m%d"))
    return cached[1]


class Meter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: Counter[tuple[str, str]] = Counter()
        self._pending_commands = 0
        self._totals: Counter[str] = Counter()
        self._last_flush = clock.monotonic()
        self._flushing = threading.local()

    # -- recording (hot path: a dict update under a lock) --
    def commands(self, n: int, round_trips: int = 1) -> None:
        name = _feature.get()
        day = _day()
        with self._lock:
            self._pending[(day, f"cmd:{name}")] += n
            self._pending[(day, f"rt:{name}")] += round_trips
            self._totals[f"cmd:{name}"] += n
            self._totals[f"rt:{name}"] += round_trips
            self._pending_commands += n

    def add(self, fld: str, n: int = 1) -> None:
        day = _day()
        with self._lock:
            self._pending[(day, fld)] += n
            self._totals[fld] += n

    def snapshot(self) -> Counter[str]:
        """Totals recorded by this process since start (or reset); for demos, benchmarks and tests."""
        with self._lock:
            return Counter(self._totals)

    def pending(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self._pending)

    def reset(self) -> None:
        with _past_lock:
            _past_days.clear()
        with self._lock:
            self._pending.clear()
            self._totals.clear()
            self._pending_commands = 0
            self._last_flush = clock.monotonic()

    # -- flushing --
    def maybe_flush(self) -> None:
        from hotcache.conf import hotcache_settings

        if getattr(self._flushing, "active", False):
            return
        every = int(hotcache_settings.METER_FLUSH_EVERY)
        due = self._pending_commands >= every or (
            self._pending_commands >= _TIME_FLUSH_MINIMUM
            and clock.monotonic() - self._last_flush >= _TIME_FLUSH_SECONDS
        )
        if due:
            self.flush()

    def flush(self) -> bool:
        """Write buffered counts to Redis in one command. False (counts kept) if Redis is unavailable."""
        from hotcache import keys
        from hotcache.backends import redis as redis_backend
        from hotcache.exceptions import RedisUnavailable

        if getattr(self._flushing, "active", False):
            return False
        with self._lock:
            batch = self._pending
            self._pending = Counter()
            self._pending_commands = 0
            self._last_flush = clock.monotonic()
        pool = _pool_report()
        if not batch and pool is None:
            return True
        by_day: dict[str, list[str]] = {}
        for (day, fld), n in batch.items():
            by_day.setdefault(day, []).extend((fld, str(n)))
        script = redis_backend.Script("meter_flush")
        day_keys = [keys.tagged("meter", "usage", day) for day in by_day]
        args: list[str] = [str(_METER_TTL), str(len(by_day))]
        for day in by_day:
            args.append(str(len(by_day[day]) // 2))
            args.extend(by_day[day])
        if pool is not None:
            day_keys.append(keys.tagged("meter", "usage", "pools"))
            args.extend(pool)
        self._flushing.active = True
        try:
            redis_backend.call("meter", lambda r: script(r, day_keys, args))
        except RedisUnavailable:
            with self._lock:
                self._pending.update(batch)
                self._pending_commands += sum(n for (_, f), n in batch.items() if f.startswith("cmd:"))
            return False
        finally:
            self._flushing.active = False
        return True


meter = Meter()


def _pool_report() -> tuple[str, str] | None:
    """(field, JSON) of this process's MongoDB pool for the deployment-wide view, if it has a pool."""
    import json
    import os
    import socket

    from hotcache.backends import mongo

    stats = mongo.local_pool_stats()
    if stats is None:
        return None
    figures = {k: v for k, v in stats.as_dict().items() if k != "monitored"}
    figures["at"] = round(clock.time(), 1)
    return f"{socket.gethostname()}:{os.getpid()}", json.dumps(figures, separators=(",", ":"))


POOL_REPORT_FRESH_SECONDS = 600.0


def _fresh_pools(raw: dict[Any, Any], key: str, feature: str) -> dict[str, dict[str, Any]]:
    """Published pool figures of processes heard from within POOL_REPORT_FRESH_SECONDS; entries silent
    for a day (dead processes) are deleted, so the hash stays as small as the deployment."""
    import json

    from hotcache.backends import redis as redis_backend
    from hotcache.exceptions import RedisUnavailable

    now = clock.time()
    fresh: dict[str, dict[str, Any]] = {}
    gone: list[str] = []
    for k, v in raw.items():
        name = k.decode() if isinstance(k, bytes) else k
        try:
            figures = json.loads(v)
            age = now - float(figures.get("at", 0))
        except (ValueError, TypeError, AttributeError):
            gone.append(name)
            continue
        if age <= POOL_REPORT_FRESH_SECONDS:
            fresh[name] = figures
        elif age > 86400:
            gone.append(name)
    if gone:
        try:
            redis_backend.call(feature, lambda r: r.hdel(key, *gone))
        except RedisUnavailable:
            pass
    return fresh


def event(feature_name: str, name: str, n: int = 1) -> None:
    """Count a feature event (a cache hit, a denial, a fallback) for the reports."""
    meter.add(f"ev:{feature_name}:{name}", n)


def mongo_op(feature_name: str, n: int = 1) -> None:
    meter.add(f"mongo:{feature_name}", n)


def snapshot() -> Counter[str]:
    return meter.snapshot()


def flush() -> bool:
    return meter.flush()


@dataclass(slots=True)
class DayUsage:
    day: str  # YYYYMMDD
    fields: Counter[str] = field(default_factory=Counter)

    @property
    def commands(self) -> int:
        return sum(n for f, n in self.fields.items() if f.startswith("cmd:"))

    def by_prefix(self, prefix: str) -> dict[str, int]:
        """{'ratelimit': 12, ...} for fields named '<prefix>:<feature>'."""
        out: dict[str, int] = {}
        for f, n in self.fields.items():
            if f.startswith(prefix + ":"):
                out[f[len(prefix) + 1 :]] = out.get(f[len(prefix) + 1 :], 0) + n
        return out


# Past days' meters barely change (only a process flushing across midnight adds to yesterday), so report
# pages read them once per PAST_DAYS_CACHE_SECONDS per process: a page then costs one HGETALL, not 30.
PAST_DAYS_CACHE_SECONDS = 300.0
_past_lock = threading.Lock()
_past_days: dict[tuple[str, str], tuple[float, Counter[str]]] = {}


@dataclass(slots=True)
class MeterRead:
    days: list[DayUsage]  # newest first
    pools: dict[str, dict[str, Any]]  # host:pid -> that process's last published MongoDB pool figures


def usage(days: int = 30, *, feature: str = "reports") -> list[DayUsage]:
    """The last ``days`` UTC days, newest first (see read())."""
    return read(days, feature=feature).days


def read(days: int = 30, *, feature: str = "reports") -> MeterRead:
    """The last ``days`` UTC days, newest first, from Redis plus this process's unflushed counts, and the
    MongoDB pools hotcache's processes published (fresh ones only).

    One Redis round trip (a pipeline of HGETALL, metered under ``feature``: reading the meter is the
    reports' cost, not the meter's). Today is always read; past days come from a per-process cache of
    PAST_DAYS_CACHE_SECONDS when it has them. If Redis is unavailable, only local counts are shown.
    """
    import datetime as dt

    from hotcache import keys
    from hotcache.backends import redis as redis_backend
    from hotcache.exceptions import RedisUnavailable

    today = clock.utcnow().date()
    day_names = [(today - dt.timedelta(days=i)).strftime("%Y%m%d") for i in range(days)]
    result = {d: DayUsage(d) for d in day_names}
    prefix, now = keys.prefix(), clock.monotonic()
    with _past_lock:
        cached = {d: c for d in day_names[1:] if (hit := _past_days.get((prefix, d))) and hit[0] > now
                  for c in (hit[1],)}
    to_read = [d for d in day_names if d not in cached]

    pools_key = keys.tagged("meter", "usage", "pools")

    def fetch(r):  # type: ignore[no-untyped-def]
        pipe = r.pipeline(transaction=False)
        for d in to_read:
            pipe.hgetall(keys.tagged("meter", "usage", d))
        pipe.hgetall(pools_key)
        return pipe.execute()

    try:
        *rows, raw_pools = redis_backend.call(feature, fetch)
    except RedisUnavailable:
        rows, to_read, raw_pools = [], [], {}
    for d, row in zip(to_read, rows, strict=True):
        for k, v in row.items():
            fld = k.decode() if isinstance(k, bytes) else k
            result[d].fields[fld] += int(v)
    with _past_lock:
        for d in to_read[1:]:  # to_read[0] is today, never cached
            _past_days[(prefix, d)] = (now + PAST_DAYS_CACHE_SECONDS, Counter(result[d].fields))
    for d, fields in cached.items():
        result[d].fields.update(fields)
    pools = _fresh_pools(raw_pools, pools_key, feature)
    for (d, fld), n in meter.pending().items():
        if d in result:
            result[d].fields[fld] += n
    return MeterRead([result[d] for d in day_names], pools)


def _flush_at_exit() -> None:
    try:
        meter.flush()
    except Exception:
        log.debug("hotcache: meter flush at exit failed", exc_info=True)


atexit.register(_flush_at_exit)
