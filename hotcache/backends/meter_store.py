"""The meter's store: hotcache.metering counts in-process; this module writes and reads the counts in Redis.

Flush: one EVALSHA (meter_flush.lua) holding every buffered field of every day, plus this process's
MongoDB pool figures: 3 billed commands (EVALSHA, HGET and HSET of the day's JSON counts), its own cost
included in what it writes. Exactly once: each flush carries this process's writer and a rising token, which the
script records in today's JSON in the same step; a flush whose reply was lost is this writer's doubt
(hotcache.recovery), re-sent unchanged before anything else, and skipped by the script if it had run.
Read: one pipeline of HGETALL (the daily hashes not cached yet, and the pools
hash of versions before pools moved into the daily hash). Installed by HotcacheConfig.ready().
"""

from __future__ import annotations

import atexit
import datetime as dt
import itertools
import json
import logging
import os
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hotcache import clock, keys, metering, recovery
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import RedisUnavailable

__all__ = ["RedisMeterStore", "install", "store"]

log = logging.getLogger("hotcache.metering")
_METER_TTL = 40 * 86400  # a little over the 30 days the reports show
MERGED = "*"  # field of a daily hash holding the day's counts as JSON (meter_flush.lua); no counter is named so
POOL = "pool:"  # prefix of a daily hash's fields holding a process's MongoDB pool figures (JSON)
_OWN = ("billed:meter", "cmd:meter", "rt:meter")


@dataclass(slots=True)
class _Doubt:
    """A flush whose reply was lost: re-sent unchanged (same day keys, token and counts) before the next one."""

    day_keys: list[str]
    args: list[str]
    today: str


_doubts: recovery.InDoubt[_Doubt] = recovery.InDoubt()
_tokens = itertools.count(1)  # rising in this process; the writer's nonce is new in a forked child


def meter_writer() -> str:
    """The writer (hotcache.recovery) of this process's meter flushes: one per process, flushes serialised."""
    return f"{recovery.process_nonce()}:meter"


def _flush_every() -> int:
    return int(hotcache_settings.METER_FLUSH_EVERY)


class RedisMeterStore:
    def __init__(self) -> None:
        self._flushing = threading.local()  # a flush's own Redis call must not start another flush
        self._past_lock = threading.Lock()
        self._write_lock = threading.Lock()
        os.register_at_fork(after_in_child=self._renew_lock)
        self._past_days: dict[tuple[str, str], tuple[float, Counter[str]]] = {}
        self._script = redis_backend.Script("meter_flush")

    def _renew_lock(self) -> None:
        self._write_lock = threading.Lock()  # one held by another thread at fork time would stay held

    def reset(self) -> None:
        """Forget the cached past days (tests)."""
        with self._past_lock:
            self._past_days.clear()

    def maybe_flush(self) -> None:
        """Flush when METER_FLUSH_EVERY commands are buffered (or a minute passed with enough of them).

        Runs after every successful Redis call (the per-request ones too) and almost always says no: the
        setting is read once per HOTCACHE dict, and the cheap count check comes first.
        """
        every = hotcache_settings.derived("meter_flush_every", _flush_every)
        if metering.meter.due(every) and not getattr(self._flushing, "active", False):
            self.flush(wait=False)

    def flush(self, *, wait: bool = True) -> bool:
        """Write the buffered counts (after re-sending a flush whose reply was lost); False if Redis did not
        answer, or (``wait=False``) another thread is flushing: a request thread never waits for the meter."""
        if getattr(self._flushing, "active", False):
            return False
        # One flush at a time: the writer's tokens must reach Redis in order.
        if not self._write_lock.acquire(blocking=wait):
            return False
        self._flushing.active = True
        try:
            return self._flush()
        finally:
            self._flushing.active = False
            self._write_lock.release()

    def _flush(self) -> bool:
        writer = meter_writer()
        doubt = _doubts.get(writer)
        if doubt is not None and not self._send(writer, doubt):
            return False  # Redis still does not answer: the buffer keeps growing, the doubt waits
        batch = metering.meter.take()
        pool = _pool_report()
        if not batch and pool is None:
            return True
        today = clock.utcnow().strftime("%Y%m%d")
        by_day: dict[str, list[str]] = {today: []}  # today first: it also gets the flush's own cost
        for (day, fld), n in batch.items():
            by_day.setdefault(day, []).extend((_encodable(fld), str(n)))
        day_keys = [keys.tagged("meter", "usage", day) for day in by_day]
        args: list[str] = [str(_METER_TTL), str(len(by_day)), MERGED, *_OWN, *(pool or ("", ""))]
        args.extend((writer, str(next(_tokens))))
        for day in by_day:
            args.append(str(len(by_day[day]) // 2))
            args.extend(by_day[day])
        return self._send(writer, _Doubt(day_keys, args, today), batch)

    def _send(self, writer: str, call: _Doubt, batch: Counter[tuple[str, str]] | None = None) -> bool:
        """Send one flush (``batch`` given) or re-send ``writer``'s doubt; False if Redis did not answer.

        A lost reply makes the flush the writer's doubt: its counts are not put back (the script may have
        added them), and the lost attempt's own cost is in Redis if the script ran, billed nowhere if not."""
        day = clock.utcnow().strftime("%Y%m%d")  # the day the meter counts this call's commands under
        try:
            with metering.self_counted() as sent:
                written, reset, *skipped = redis_backend.call(
                    "meter", lambda r: self._script(r, call.day_keys, call.args)
                )
        except RedisUnavailable as exc:
            if exc.maybe_applied:
                sent.subtract({(day, _OWN[0]): 1, (day, _OWN[1]): 1, (day, _OWN[2]): 1})
                metering.meter.restore(+sent)
                if batch is not None:
                    _doubts.add(writer, call)
                    log.warning("hotcache: reply to a meter flush lost; re-sent before the next flush")
                return False
            if batch is not None:
                metering.meter.restore(batch)
            metering.meter.restore(sent)  # the attempt is billed with the next flush
            return False
        if batch is None:
            _doubts.settled(writer, call)
            metering.event("meter", "in_doubt_replayed" if skipped and int(skipped[0]) else "in_doubt_applied")
        # The script wrote its own EVALSHA, what it ran, one command and one round trip; what the meter saw
        # beyond that (a NOSCRIPT retry's refused EVALSHA) goes out with the next flush.
        sent.subtract({(day, _OWN[0]): int(written), (day, _OWN[1]): 1, (day, _OWN[2]): 1})
        metering.meter.restore(+sent)
        for _ in range(int(reset)):
            log.warning("hotcache: a meter record in Redis was not written by hotcache; reset")
        return True

    def read(self, days: int = 30, *, feature: str = "reports") -> metering.MeterRead:
        """The last ``days`` UTC days, newest first, from Redis plus this process's unflushed counts, and the
        MongoDB pools hotcache's processes published (fresh ones only).

        One Redis round trip (a pipeline of HGETALL, metered under ``feature``: reading the meter is the
        reports' cost, not the meter's). Today is always read; past days come from a per-process cache of
        PAST_DAYS_CACHE_SECONDS when it has them. If Redis is unavailable, only local counts are shown.
        """
        today = clock.utcnow().date()
        day_names = [(today - dt.timedelta(days=i)).strftime("%Y%m%d") for i in range(days)]
        result = {d: metering.DayUsage(d) for d in day_names}
        prefix, now = keys.prefix(), clock.monotonic()
        with self._past_lock:
            cached = {d: hit[1] for d in day_names[1:] if (hit := self._past_days.get((prefix, d))) and hit[0] > now}
        to_read = [d for d in day_names if d not in cached]
        pools_key = keys.tagged("meter", "usage", "pools")

        def fetch(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for d in to_read:
                pipe.hgetall(keys.tagged("meter", "usage", d))
            pipe.hgetall(pools_key)
            replies: list[Any] = pipe.execute()
            return replies

        try:
            *rows, raw_pools = redis_backend.call(feature, fetch)
        except RedisUnavailable:
            rows, to_read, raw_pools = [], [], {}
        published: dict[Any, Any] = {}
        for d, row in zip(to_read, rows, strict=True):
            for k, v in row.items():
                fld = k.decode() if isinstance(k, bytes) else k
                if fld == MERGED:
                    result[d].fields.update(_merged(v))
                elif fld.startswith(POOL):
                    published[fld.removeprefix(POOL)] = v
                else:
                    result[d].fields[fld] += int(v)  # written by a version before the JSON field
        with self._past_lock:
            for d in to_read[1:]:  # to_read[0] is today, never cached
                self._past_days[(prefix, d)] = (now + metering.PAST_DAYS_CACHE_SECONDS, Counter(result[d].fields))
        for d, fields in cached.items():
            result[d].fields.update(fields)
        pools = _fresh_pools(raw_pools, pools_key, feature)  # published by versions before the daily hash's
        pools.update(_fresh_pools(published, "", feature))
        for (d, fld), n in metering.meter.pending().items():
            if d in result:
                result[d].fields[fld] += n
        return metering.MeterRead([result[d] for d in day_names], pools)


def _encodable(fld: str) -> str:
    # A field name holding a lone surrogate (an event named after odd input) must not fail the whole flush.
    return fld if fld.isascii() else fld.encode("utf-8", "backslashreplace").decode("utf-8")


def _merged(raw: Any) -> Counter[str]:
    """The counts of a daily hash's JSON field; empty if it is not what meter_flush.lua writes."""
    try:
        parsed = json.loads(raw)
    except (ValueError, TypeError):
        return Counter()
    if not isinstance(parsed, dict):
        return Counter()
    return Counter({str(k): int(v) for k, v in parsed.items() if isinstance(v, int | float)})


def _pool_report() -> tuple[str, str] | None:
    """(field, JSON) of this process's MongoDB pool for the deployment-wide view, if it has a pool."""
    stats = mongo.local_pool_stats()
    if stats is None:
        return None
    figures = {k: v for k, v in stats.as_dict().items() if k != "monitored"}
    figures["at"] = round(clock.time(), 1)
    return f"{POOL}{socket.gethostname()}:{os.getpid()}", json.dumps(figures, separators=(",", ":"))


def _fresh_pools(raw: dict[Any, Any], key: str, feature: str) -> dict[str, dict[str, Any]]:
    """Published pool figures of processes heard from within POOL_REPORT_FRESH_SECONDS; entries silent
    for a day (dead processes) are deleted, so the hash stays as small as the deployment."""
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
        if age <= metering.POOL_REPORT_FRESH_SECONDS:
            fresh[name] = figures
        elif age > 86400:
            gone.append(name)
    if gone and key:
        try:
            redis_backend.call(feature, lambda r: r.hdel(key, *gone))
        except RedisUnavailable:
            pass
    return fresh


store = RedisMeterStore()


def _flush_at_exit() -> None:
    try:
        store.flush()
    except Exception:
        log.debug("hotcache: meter flush at exit failed", exc_info=True)


def install() -> None:
    """Make metering.flush()/read() use Redis, and flush after calls (HotcacheConfig.ready())."""
    metering.use_store(store)
    redis_backend.after_call(store.maybe_flush)


atexit.register(_flush_at_exit)
