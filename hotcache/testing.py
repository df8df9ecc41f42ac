"""Test helpers for hotcache and for projects that use it.

* ``count_redis()``: Redis commands, round trips and billed commands hotcache spent inside a block, per feature.
* ``RedisProxy``: a TCP proxy in front of a real Redis that a test can take down and bring back.
* ``frozen_clock()``: move hotcache's clock without sleeping.
* ``mongo_down()``: every MongoDB operation fails like a lost network inside the block.
* ``ensure_redis()``: a Redis URL that answers: the given one, or a throwaway redis-server started here.
* ``redis_server()``: a throwaway redis-server of the block's own (its INFO commandstats are the block's alone).
* ``reset()``: forget everything hotcache keeps in this process, as a freshly started process would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from unittest import mock
from urllib.parse import urlsplit

from hotcache import metering
from hotcache.backends import mongo

__all__ = [
    "RedisCount",
    "RedisProxy",
    "count_redis",
    "ensure_redis",
    "frozen_clock",
    "mongo_down",
    "new_process",
    "redis_server",
    "reset",
]


def new_process() -> None:
    """Forget what this process knows about lost replies, outages and writes it owes Redis, as if the next
    call came from another process that never saw them (hotcache.recovery's registries). The workbench
    durable copies this process owes MongoDB are written first, as its own writer does within
    WORKBENCH_DURABLE_INTERVAL: the next call comes from another process at least that much later."""
    from hotcache import recovery
    from hotcache.workbench._durable import writer

    writer.flush()
    recovery.forget_all()


def reset() -> None:
    """Forget everything hotcache keeps in this process: clients, health gate, meter counts and caches,
    values derived from settings (with the rate limiter's deny cache and local limiter), the tampering log.
    Use it between tests (an autouse fixture) so each starts like a fresh process."""
    from hotcache import recovery, signing
    from hotcache.analytics._batch import batch
    from hotcache.backends import meter_store, reset_all
    from hotcache.conf import hotcache_settings
    from hotcache.workbench._durable import writer

    recovery.forget_all()  # first: pending background writes are dropped and their daemons told to stop
    for background in (writer, batch):
        with background._write_lock:  # a write already under way lands now, before the stores are reset,
            pass  # not in the middle of the next test
    reset_all()
    hotcache_settings.reload()
    metering.meter.reset()
    meter_store.store.reset()
    signing._reset()
    recovery.forget_all()  # not new_process(): nothing this process owes is written into the next test


@dataclass(slots=True)
class RedisCount:
    commands: int = 0
    round_trips: int = 0
    billed: int = 0  # what a per-command provider bills: every command the server ran, scripts' own included
    by_feature: Counter[str] = field(default_factory=Counter)
    billed_by_feature: Counter[str] = field(default_factory=Counter)
    mongo_ops: int = 0
    events: Counter[str] = field(default_factory=Counter)


@contextlib.contextmanager
def count_redis() -> Iterator[RedisCount]:
    """Count what hotcache sends to Redis, what it is billed for (and MongoDB operations) inside the block, from
    the metered connections and the command counts the scripts report."""
    before = metering.snapshot()
    result = RedisCount()
    try:
        yield result
    finally:
        delta = metering.snapshot()
        delta.subtract(before)
        for name, n in delta.items():
            if not n:
                continue
            if name.startswith("cmd:"):
                result.commands += n
                result.by_feature[name[4:]] += n
            elif name.startswith("rt:"):
                result.round_trips += n
            elif name.startswith("billed:"):
                result.billed += n
                result.billed_by_feature[name[7:]] += n
            elif name.startswith("mongo:"):
                result.mongo_ops += n
            elif name.startswith("ev:"):
                result.events[name[3:]] += n


def mongo_down() -> contextlib.AbstractContextManager[None]:
    return mongo.inject_failures()


@contextlib.contextmanager
def frozen_clock(start: float | None = None) -> Iterator[FrozenClock]:
    """Patch hotcache.clock so time moves only when the test calls .advance(seconds)."""
    frozen = FrozenClock(time.time() if start is None else start)
    with (
        mock.patch("hotcache.clock._time.time", frozen.time),
        mock.patch("hotcache.clock._time.monotonic", frozen.monotonic),
    ):
        yield frozen


class FrozenClock:
    def __init__(self, start: float) -> None:
        self._now = start
        self._mono = 1_000_000.0

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds


class RedisProxy:
    """A loopback TCP proxy to a Redis server. down() drops every connection and refuses new ones; up() reopens.

    Use its ``url`` as the LOCATION of a django-redis cache to simulate an outage mid-test.
    """

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._db = parts.path or "/0"
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.up()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self._db}"

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def up(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    close = down

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def _ping(url: str, timeout: float = 0.5) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout).ping())
    except Exception:
        return False


def ensure_redis(url: str = "redis://127.0.0.1:6379/0") -> str:
    """Return a Redis URL that answers: ``url`` if it does, else a throwaway redis-server started here.

    The started server's URL is exported as HOTCACHE_TEST_REDIS_URL, so child processes (Celery
    workers, gunicorn) reuse it; it is stopped when this process exits. Raises RuntimeError, never
    skips, when no Redis can be had.
    """
    if _ping(url):
        return url
    proc, port = _start_redis_server()
    import atexit

    atexit.register(proc.terminate)
    db = urlsplit(url).path or "/0"
    started = f"redis://127.0.0.1:{port}{db}"
    os.environ["HOTCACHE_TEST_REDIS_URL"] = started
    return started


def _start_redis_server(*extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server on a free loopback port, no persistence, answering PING; RuntimeError if it cannot be had."""
    binary = shutil.which("redis-server")
    if binary is None:
        msg = (
            "redis-server is not installed: install it (apt-get install -y redis-server) "
            "or set HOTCACHE_TEST_REDIS_URL to a Redis that answers."
        )
        raise RuntimeError(msg)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _ping(f"redis://127.0.0.1:{port}/0", timeout=0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            msg = f"redis-server ({binary}) did not start on port {port}"
            raise RuntimeError(msg)
        time.sleep(0.05)  # waiting for a child process to bind its port; nothing to synchronise on
    return proc, port


@contextlib.contextmanager
def redis_server(*extra: str) -> Iterator[str]:
    """A throwaway redis-server (``extra``: more command-line options) for the block; yields its URL (db 0).

    For what the shared server cannot give: INFO commandstats of one client alone (CONFIG RESETSTAT on a
    shared server would reset everyone's), or settings (maxmemory, replicaof) a test must not impose on others.
    """
    proc, port = _start_redis_server(*extra)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
