"""A per-process buffer written in the background, written once: what a feature gathers in-process and writes
every N seconds by a daemon thread, at exit, and whenever the feature asks (``flush()``, from any thread).

A forked child starts empty with no thread (its parent writes what it holds; the child's first item starts
its own daemon); ``recovery.forget_all()`` drops what is buffered and stops the daemon (tests); ``stop()``
stops the daemon only (the next item starts it again). The analytics batch (analytics/_batch.py) and the
workbench's durable copies (workbench/_durable.py) keep only what is theirs: what they buffer, how they write
it, their interval setting, their thread's name and their log message.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import ClassVar, Generic, TypeVar

from hotcache import clock, recovery

__all__ = ["PeriodicBuffer"]

T = TypeVar("T")

_MIN_WAIT = 0.05  # the daemon's shortest sleep, whatever the interval says


class PeriodicBuffer(recovery.ProcessLocal, Generic[T]):
    """Base of a buffer flushed every ``interval()`` seconds (from its oldest item) by a daemon thread.

    A subclass sets ``thread_name``, ``log`` and ``failure_message`` (logged when the daemon's write fails),
    and implements ``interval()``, ``_empty()`` (a new, empty buffer), ``_take()`` (the buffer's contents,
    leaving it empty; called under ``self._lock``) and ``_write(taken)`` (write them; what ``flush()``
    returns). After adding an item under ``self._lock`` it calls ``_buffered()``.
    """

    thread_name: ClassVar[str]
    log: ClassVar[logging.Logger]
    failure_message: ClassVar[str]

    def __init__(self) -> None:
        self._write_lock = threading.Lock()  # one write at a time: a flush waits for the one under way
        super().__init__()
        self._forget()

    def interval(self) -> float:
        """Seconds from the oldest buffered item to its write (the feature's setting)."""
        raise NotImplementedError

    def _empty(self) -> None:
        raise NotImplementedError

    def _take(self) -> T:
        raise NotImplementedError

    def _write(self, taken: T) -> int:
        raise NotImplementedError

    def _renew_locks(self) -> None:
        super()._renew_locks()
        self._write_lock = threading.Lock()
        # The parent's daemon may have held its wake event's lock at the fork: a forked child has no daemon to
        # stop, so _forget() sets a new event instead of waiting on that one.
        self._wake = threading.Event()

    def _forget(self) -> None:
        old = getattr(self, "_wake", None)
        if old is not None:
            old.set()  # the daemon of what is forgotten stops (in a forked child there is none)
        self._started: float | None = None  # clock.time() of the oldest buffered item
        self._started_real: float | None = None  # time.monotonic() of the same: what the daemon sleeps by
        self._timer: threading.Thread | None = None
        self._wake = threading.Event()
        self._empty()

    def _buffered(self) -> None:
        """An item was added (the caller holds ``self._lock``): the interval starts with the first one, and
        the daemon runs."""
        if self._started is None:
            self._started, self._started_real = clock.time(), time.monotonic()
        if self._timer is None or not self._timer.is_alive():
            self._wake = threading.Event()
            self._timer = threading.Thread(target=self._run, args=(self._wake,), name=self.thread_name)
            self._timer.daemon = True
            self._timer.start()

    def due(self) -> bool:
        """Whether the interval (from the oldest buffered item) is over."""
        started = self._started
        return started is not None and clock.time() - started >= self.interval()

    def flush(self) -> int:
        """Write what is buffered now; what ``_write`` counts. Safe from any thread."""
        with self._write_lock:
            with self._lock:
                taken, self._started, self._started_real = self._take(), None, None
            return self._write(taken)

    def flush_or_log(self, message: str) -> int:
        """``flush()`` where a failure must not propagate (exit, the daemon, before a fallback): it is logged
        with ``message``; 0 then."""
        try:
            return self.flush()
        except Exception:
            self.log.warning(message, exc_info=True)
            return 0

    def _run(self, wake: threading.Event) -> None:
        """The daemon: writes the buffer once its interval is over, until ``wake`` is set.

        It sleeps by the monotonic clock and writes when ``due()`` says so by hotcache's clock (the same in
        production): a test that moves hotcache's clock never wakes the daemon early to race its own flush."""
        while True:
            started, interval = self._started_real, max(_MIN_WAIT, self.interval())
            wait = interval if started is None else max(_MIN_WAIT, started + interval - time.monotonic())
            if wake.wait(min(wait, interval)):
                return
            if self.due():
                self.flush_or_log(self.failure_message)

    def stop(self) -> None:
        """Stop the daemon (tests); the next item starts it again."""
        self._wake.set()
