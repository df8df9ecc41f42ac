"""Analytics batching (ANALYTICS_BATCH_SECONDS > 0): events summed in-process and written in one track script
call per interval and process, exactly once through the same lost-reply protocol as a single event.

A killed process loses at most its unwritten batch: the events of at most one interval (or of one full batch,
MAX_COUNTERS / MAX_VISITORS, whichever comes first). The batch is written at exit (atexit, Celery's
worker_process_shutdown, gunicorn's worker_exit hook), when an event finds the interval over, and by a
daemon thread once the interval is over with no further events. See docs/analytics.md ("Batching").
"""

from __future__ import annotations

import logging

from hotcache import metering, recovery
from hotcache.analytics._events import FEATURE, Event
from hotcache.analytics._fallback import buffer
from hotcache.analytics._keys import bucket_writer, walked
from hotcache.analytics._send import send, settle_own_doubt
from hotcache.analytics._write import CounterKey, VisitorKey, build_split
from hotcache.conf import hotcache_settings
from hotcache.periodic import PeriodicBuffer

__all__ = ["MAX_COUNTERS", "MAX_VISITORS", "Batch", "batch", "batch_writer"]

log = logging.getLogger("hotcache.analytics")

MAX_COUNTERS = 1000  # distinct (hour, event, path) counters in one batch before it is written early
MAX_VISITORS = 10_000  # visitor digests in one batch before it is written early


def batch_writer() -> str:
    """The writer (hotcache.recovery) of this process's batches: one per process, whichever thread writes."""
    return f"{recovery.process_nonce()}:batch"


class Batch(PeriodicBuffer[tuple[dict[CounterKey, int], dict[VisitorKey, set[str]]]]):
    """This process's events of the current interval, summed: {(hour, event, path): n} and {(hour, event):
    visitor digests}. A forked child starts empty (its parent writes what it summed)."""

    thread_name = "hotcache-analytics-batch"
    log = log
    failure_message = "hotcache analytics: batch write failed"

    def interval(self) -> float:
        return float(hotcache_settings.ANALYTICS_BATCH_SECONDS)

    def _empty(self) -> None:
        self._counters: dict[CounterKey, int] = {}
        self._visitors: dict[VisitorKey, set[str]] = {}
        self._n_visitors = 0

    def _take(self) -> tuple[dict[CounterKey, int], dict[VisitorKey, set[str]]]:
        taken = self._counters, self._visitors
        self._empty()
        return taken

    def __len__(self) -> int:
        """Events summed and not written yet."""
        with self._lock:
            return sum(self._counters.values())

    def add(self, hour: str, ev: Event) -> str:
        """Sum ``ev`` (of ``hour``) into the batch; write the batch if its interval is over or it is full."""
        if self.add_only(hour, ev):
            self.flush()
        return "batched"

    def add_only(self, hour: str, ev: Event) -> bool:
        """Sum ``ev`` into the batch without writing it; True when a write is due (the caller flushes: async code
        does it off the event loop)."""
        with self._lock:
            key = (hour, ev.event, ev.path)
            self._counters[key] = self._counters.get(key, 0) + ev.count
            if ev.visitor:
                seen = self._visitors.setdefault((hour, ev.event), set())
                if ev.visitor not in seen:
                    seen.add(ev.visitor)
                    self._n_visitors += 1
            full = len(self._counters) >= MAX_COUNTERS or self._n_visitors >= MAX_VISITORS
            self._buffered()
        metering.event(FEATURE, "batched", ev.count)
        return full or self.due()

    def _write(self, taken: tuple[dict[CounterKey, int], dict[VisitorKey, set[str]]]) -> int:
        """One script call per bucket the events fall in, after settling a previous batch whose reply was lost;
        the events written to Redis or, Redis down, to the outage buffer."""
        counters, visitors = taken
        if not counters:
            # Nothing to write: only settle the doubts of earlier batches (one per bucket written).
            for tag in walked():
                settle_own_doubt(bucket_writer(batch_writer(), tag))
            return 0
        # One script call per bucket the batch's events fall in (one in the single-tag layout).
        any_sent = False
        for writer, w, part in build_split(batch_writer(), counters, visitors, label="batch"):
            if not settle_own_doubt(writer):
                self._to_buffer(part)  # Redis does not answer: the outage path (visitors are not kept)
                continue
            sent = send(writer, w)
            if sent.outcome == "unavailable":
                self._to_buffer(part)
            any_sent = any_sent or sent.outcome == "redis"
        if any_sent and buffer.has_data():
            buffer.flush_if_due()
        return sum(counters.values())

    def _to_buffer(self, counters: dict[CounterKey, int]) -> int:
        for key, n in counters.items():
            buffer.add(key, n)
        return sum(counters.values())


batch = Batch()
