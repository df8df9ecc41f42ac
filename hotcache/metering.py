"""Command metering: how many Redis commands (and MongoDB operations) hotcache spends, per feature and UTC day.

Counting happens on hotcache's own Redis connections (every command the wire carries, handshakes
included), attributed to the feature running the call. Billed commands are what a per-command provider
(Upstash) bills: every command the server executes (each one of a pipeline or MULTI, MULTI and EXEC too,
each ``redis.call``/``redis.pcall`` a script ran, which the script reports in its reply) except the free
ones (FREE_COMMANDS). Only hotcache's own connections are seen: other clients of the same Redis are not.

Counts are buffered in-process and written with a single EVALSHA per flush (holding every field), after
METER_FLUSH_EVERY commands, or at most once a minute when at least 100 are buffered; the flush is metered
too (feature ``meter``: 3 billed commands, EVALSHA + HGET + HSET per day, written by the flush itself).
The daily hash ``<prefix>:{meter:usage}:<YYYYMMDD>`` keeps the day's counts as JSON in its field ``*``
(MERGED; written by meter_flush.lua) and, from versions before it, as integer fields of the same names:

    cmd:<feature>   Redis commands sent     rt:<feature>    Redis round trips
    billed:<feature> billed commands (what the server executed, free commands excluded)
    mongo:<feature> MongoDB operations      ev:<feature>:<name>  feature events (hits, denials, fallbacks)
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import logging
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hotcache import clock

__all__ = [
    "FREE_COMMANDS",
    "DayUsage",
    "MeterRead",
    "Store",
    "billable",
    "command_sent",
    "current_feature",
    "event",
    "events",
    "feature",
    "feature_var",
    "flush",
    "meter",
    "mongo_op",
    "pipeline_sent",
    "read",
    "self_counted",
    "server_billed",
    "snapshot",
    "usage",
    "use_store",
]

log = logging.getLogger("hotcache.metering")

_feature: contextvars.ContextVar[str] = contextvars.ContextVar("hotcache_feature", default="other")
# The variable ``feature()`` sets, for the one caller on every Redis call (backends.redis) that sets and resets
# it directly: the same scope without the context manager's three Python calls.
feature_var = _feature
# Inside self_counted(): counts go to the totals and to this Counter instead of the store's buffer.
_self_counted: contextvars.ContextVar[Counter[tuple[str, str]] | None] = contextvars.ContextVar(
    "hotcache_meter_self_counted", default=None
)
_TIME_FLUSH_SECONDS = 60.0
_TIME_FLUSH_MINIMUM = 100  # a time-based flush only when it costs <= 1% of what it reports
# Processes publish their MongoDB pool figures with each flush; reports show those heard from this recently.
POOL_REPORT_FRESH_SECONDS = 600.0
# Past days' meters barely change (only a process flushing across midnight adds to yesterday), so report
# pages read them once per PAST_DAYS_CACHE_SECONDS per process: a page then costs one HGETALL, not 30.
PAST_DAYS_CACHE_SECONDS = 300.0


# Commands a per-command provider does not bill (Upstash: AUTH, INFO, PING, QUIT, COMMAND; connection
# set-up: HELLO, CLIENT SETNAME / SETINFO). Everything else the server executes is billed, MULTI and EXEC too.
FREE_COMMANDS = frozenset({"AUTH", "HELLO", "PING", "INFO", "QUIT", "COMMAND", "CLIENT"})


@functools.cache
def billable(name: str | bytes) -> bool:
    """Whether a command named ``name`` ("GET", b"EVALSHA", "CLIENT SETNAME") is billed."""
    text = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
    return text.split(" ", 1)[0].split("|", 1)[0].upper() not in FREE_COMMANDS


def server_billed(commandstats: dict[str, Any]) -> int:
    """Billed commands in an ``INFO commandstats`` reply (redis-py's dict), free commands excluded: calls
    (executed, failed ones too) and rejected calls (refused before running: OOM, READONLY, a wrong argument
    count), as the meter counts every command sent.

    The server counts every client's commands (since it started or CONFIG RESETSTAT), not hotcache's only.
    """
    total = 0
    for name, stats in commandstats.items():
        command = name.removeprefix("cmdstat_")
        if billable(command) and isinstance(stats, dict):
            total += int(stats.get("calls", 0)) + int(stats.get("rejected_calls", 0))
    return total


def current_feature() -> str:
    return _feature.get()


class feature:  # lower case: used as a function: ``with metering.feature("ratelimit"):``
    """Attribute the Redis commands sent inside this block to ``name``.

    A class rather than a generator context manager: it wraps every Redis call (the per-request ones too),
    and this form costs a third of the generator's.
    """

    __slots__ = ("_name", "_token")

    def __init__(self, name: str) -> None:
        self._name = name

    def __enter__(self) -> None:
        self._token = _feature.set(self._name)

    def __exit__(self, *exc: object) -> None:
        _feature.reset(self._token)


@functools.lru_cache(maxsize=256)
def _fields(name: str) -> tuple[str, str, str]:
    # A feature's counter names, formatted once (every metered command and script reply names them).
    return f"cmd:{name}", f"rt:{name}", f"billed:{name}"


_keys_cache: dict[str, tuple[str, tuple[str, str, str, tuple[str, str], tuple[str, str], tuple[str, str]]]] = {}


def _keys(name: str, day: str) -> tuple[str, str, str, tuple[str, str], tuple[str, str], tuple[str, str]]:
    # A feature's counter names and their (day, name) buffer keys, built once per feature and UTC day.
    cached = _keys_cache.get(name)
    if cached is not None and cached[0] is day:  # _day() hands out one string object per day
        return cached[1]
    cmd, rt, billed = _fields(name)
    keys = (cmd, rt, billed, (day, cmd), (day, rt), (day, billed))
    if len(_keys_cache) >= 256:
        _keys_cache.clear()
    _keys_cache[name] = (day, keys)
    return keys


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

    # -- recording (hot path: a dict update under a lock) --
    def commands(self, n: int, round_trips: int = 1, billed: int | None = None) -> None:
        """``n`` commands sent in ``round_trips``, ``billed`` of them billed (default: all)."""
        cmd, rt, billed_field, pcmd, prt, pbilled = _keys(_feature.get(), _day())
        billed = n if billed is None else billed
        aside = _self_counted.get()
        totals = self._totals
        with self._lock:
            pending = self._pending if aside is None else aside
            pending[pcmd] += n
            pending[prt] += round_trips
            totals[cmd] += n
            totals[rt] += round_trips
            if billed:
                pending[pbilled] += billed
                totals[billed_field] += billed
            if aside is None:
                self._pending_commands += n

    def billed(self, n: int) -> None:
        """``n`` more billed commands the server ran for one sent (a script's redis.call/pcall count)."""
        if n <= 0:
            return
        keys = _keys(_feature.get(), _day())
        aside = _self_counted.get()
        with self._lock:
            (self._pending if aside is None else aside)[keys[5]] += n
            self._totals[keys[2]] += n

    def add(self, fld: str, n: int = 1) -> None:
        day = _day()
        with self._lock:
            self._pending[(day, fld)] += n
            self._totals[fld] += n

    def add_each(self, fields: tuple[str, ...]) -> None:
        """One more of each of ``fields`` (a request's events), in one locked update."""
        day = _day()
        pending, totals = self._pending, self._totals
        with self._lock:
            for fld in fields:
                pending[(day, fld)] += 1
                totals[fld] += 1

    def snapshot(self) -> Counter[str]:
        """Totals recorded by this process since start (or reset); for demos, benchmarks and tests."""
        with self._lock:
            return Counter(self._totals)

    def pending(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self._pending)

    def reset(self) -> None:
        with self._lock:
            self._pending.clear()
            self._totals.clear()
            self._pending_commands = 0
            self._last_flush = clock.monotonic()

    # -- handing counts to the store (the Redis backend writes them) --
    def due(self, every: int) -> bool:
        """Whether a flush is due: ``every`` commands buffered, or a minute passed with enough to be worth it."""
        return self._pending_commands >= every or (
            self._pending_commands >= _TIME_FLUSH_MINIMUM
            and clock.monotonic() - self._last_flush >= _TIME_FLUSH_SECONDS
        )

    def take(self) -> Counter[tuple[str, str]]:
        """Everything buffered, removed from the buffer (give it back with restore() if the write fails)."""
        with self._lock:
            batch = self._pending
            self._pending = Counter()
            self._pending_commands = 0
            self._last_flush = clock.monotonic()
        return batch

    def restore(self, batch: Counter[tuple[str, str]]) -> None:
        """Put back a batch whose write failed: nothing is lost, it goes out with the next flush."""
        with self._lock:
            self._pending.update(batch)
            self._pending_commands += sum(n for (_, f), n in batch.items() if f.startswith("cmd:"))


meter = Meter()


@contextlib.contextmanager
def self_counted() -> Iterator[Counter[tuple[str, str]]]:
    """Commands sent inside the block count in the totals (snapshot(), count_redis()) but are not buffered for
    the store: they are collected in the yielded Counter. The meter flush writes its own cost in the write
    itself (so the last flush before exit is counted too) and buffers with restore() only what it did not
    write (a NOSCRIPT retry's refused EVALSHA, a failed flush)."""
    aside: Counter[tuple[str, str]] = Counter()
    token = _self_counted.set(aside)
    try:
        yield aside
    finally:
        _self_counted.reset(token)


def command_sent(args: Sequence[Any]) -> None:
    """Meter one command sent on its own (``args``: its name first): one round trip, billed unless free. The one
    rule of every connection path hotcache sends on (the pooled client, the lean path, redis.asyncio)."""
    meter.commands(1, 1, 1 if args and billable(args[0]) else 0)


def pipeline_sent(commands: Sequence[Sequence[Any]]) -> None:
    """Meter a pipeline, or a MULTI ... EXEC transaction (redis-py packs MULTI and EXEC with the commands): its
    commands in one round trip, each billed unless free."""
    meter.commands(len(commands), 1, sum(1 for c in commands if c and billable(c[0])))


def event(feature_name: str, name: str, n: int = 1) -> None:
    """Count a feature event (a cache hit, a denial, a fallback) for the reports."""
    meter.add(_event_field(feature_name, name), n)


def events(feature_name: str, names: tuple[str, ...]) -> None:
    """Count one of each of several events of a feature (a request's verdict and its rules') in one update."""
    meter.add_each(_event_fields(feature_name, names))


@functools.lru_cache(maxsize=4096)
def _event_fields(feature_name: str, names: tuple[str, ...]) -> tuple[str, ...]:
    # A request's events are one of a few tuples (its verdict and its rules'): their fields formatted once.
    return tuple([_event_field(feature_name, name) for name in names])


@functools.lru_cache(maxsize=4096)
def _event_field(feature_name: str, name: str) -> str:
    return f"ev:{feature_name}:{name}"


def mongo_op(feature_name: str, n: int = 1) -> None:
    meter.add(f"mongo:{feature_name}", n)


def snapshot() -> Counter[str]:
    return meter.snapshot()


class Store(Protocol):
    """Where the meter's counts go and are read back from: the Redis backend (hotcache.backends.meter_store)."""

    def flush(self) -> bool: ...

    def read(self, days: int, *, feature: str) -> MeterRead: ...


_store: Store | None = None


def use_store(store: Store | None) -> None:
    """Install the store (HotcacheConfig.ready() installs the Redis one); metering itself never imports a backend."""
    global _store
    _store = store


def flush() -> bool:
    """Write buffered counts to Redis in one command. False (counts kept) if Redis is unavailable."""
    store = _store
    return store.flush() if store is not None else False


@dataclass(slots=True)
class DayUsage:
    day: str  # YYYYMMDD
    fields: Counter[str] = field(default_factory=Counter)

    @property
    def commands(self) -> int:
        return sum(n for f, n in self.fields.items() if f.startswith("cmd:"))

    @property
    def billed(self) -> int:
        return sum(n for f, n in self.fields.items() if f.startswith("billed:"))

    @property
    def round_trips(self) -> int:
        return sum(n for f, n in self.fields.items() if f.startswith("rt:"))

    def by_prefix(self, prefix: str) -> dict[str, int]:
        """{'ratelimit': 12, ...} for fields named '<prefix>:<feature>'."""
        out: dict[str, int] = {}
        for f, n in self.fields.items():
            if f.startswith(prefix + ":"):
                out[f[len(prefix) + 1 :]] = out.get(f[len(prefix) + 1 :], 0) + n
        return out


@dataclass(slots=True)
class MeterRead:
    days: list[DayUsage]  # newest first
    pools: dict[str, dict[str, Any]]  # host:pid -> that process's last published MongoDB pool figures


def usage(days: int = 30, *, feature: str = "reports") -> list[DayUsage]:
    """The last ``days`` UTC days, newest first (see read())."""
    return read(days, feature=feature).days


def read(days: int = 30, *, feature: str = "reports") -> MeterRead:
    """The last ``days`` UTC days, newest first, and the MongoDB pools hotcache's processes published
    (hotcache.backends.meter_store.RedisMeterStore.read says what it costs)."""
    store = _store
    if store is None:
        msg = "hotcache's meter store is not installed: add 'hotcache' to INSTALLED_APPS"
        raise RuntimeError(msg)
    return store.read(days, feature=feature)
