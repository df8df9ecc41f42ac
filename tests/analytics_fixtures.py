"""Helpers shared by the analytics test modules."""

from __future__ import annotations

import datetime as dt
import os
import threading

import pytest
import redis as redis_py

from hotcache import analytics, metering
from hotcache.backends import mongo

GRACE = 300


def _drop_analytics_keys():
    client = redis_py.Redis.from_url(os.environ["HOTCACHE_TEST_REDIS_URL"])
    try:
        prefix = os.environ["HOTCACHE_TEST_PREFIX"]
        found = list(client.scan_iter(match=f"{prefix}:{{analytics:*", count=1000))
        for i in range(0, len(found), 500):
            client.unlink(*found[i : i + 500])
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _empty_fallback_buffer():
    """Each test starts with no analytics keys in this run's Redis prefix, an empty outage buffer, no doubts."""
    _drop_analytics_keys()
    analytics._fallback.clear()
    analytics._doubts.clear()
    yield
    analytics._fallback.clear()
    analytics._doubts.clear()
    _drop_future_meter_keys()


def _drop_future_meter_keys():
    """Tests here move the frozen clock by days; meter counts flushed meanwhile land in other days' meter
    hashes. Drop those (this run's prefix only) so they do not show up as extra days in other tests."""
    metering.meter.reset()
    today = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    client = redis_py.Redis.from_url(os.environ["HOTCACHE_TEST_REDIS_URL"])
    try:
        prefix = os.environ["HOTCACHE_TEST_PREFIX"]
        for key in client.scan_iter(match=f"{prefix}:{{meter:usage}}:*", count=1000):
            if not key.decode().endswith(today):
                client.unlink(key)
    finally:
        client.close()


def hourly_total(event=None):
    """Sum of MongoDB analytics_hourly counts (optionally for one event)."""
    query = {} if event is None else {"event": event}
    return sum(d["count"] for d in mongo.collection(analytics.HOURLY, feature="test").find(query))


def hourly_docs():
    return mongo.collection(analytics.HOURLY, feature="test").find({})


def close_hours(clock, hours=1):
    """Move the frozen clock past the end of the current hour plus the sync grace."""
    clock.advance(hours * 3600 + GRACE + 1)


def analytics_keys(raw_redis, key_prefix):
    return sorted(k.decode() for k in raw_redis.scan_iter(match=f"{key_prefix}:{{analytics:*", count=1000))


class LostReplyProxy:
    """A TCP proxy to the real Redis that loses the reply of chosen commands, like a Redis (or network) dying
    between receiving a command and answering it.

    ``arm("apply", "drop", ...)``: each of the next commands containing ``needle`` (one per mode, in order of
    arrival) is either forwarded so Redis applies it ("apply") or never forwarded ("drop"); either way the
    client's connection is then closed without a reply. With ``together=k`` the k armed commands wait for
    each other (a barrier), so k calls from different threads are in flight at once. Everything else is relayed.
    """

    def __init__(self, upstream_url: str) -> None:
        import socket
        from urllib.parse import urlsplit

        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.url = f"redis://127.0.0.1:{self._server.getsockname()[1]}{parts.path or '/0'}"
        self._lock = threading.Lock()
        self._needle = b""
        self._modes: list[str] = []
        self._barrier: threading.Barrier | None = None
        self.lost: list[str] = []  # modes used so far, in order
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, needle: bytes, *modes: str, together: int = 1) -> None:
        with self._lock:
            self._needle, self._modes = needle, list(modes)
            self._barrier = threading.Barrier(together) if together > 1 else None

    def close(self) -> None:
        self._server.close()

    def _take(self, data: bytes) -> str | None:
        with self._lock:
            if self._modes and self._needle and self._needle in data:
                mode = self._modes.pop(0)
                self.lost.append(mode)
                return mode
        return None

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            muted = threading.Event()  # set: replies from Redis are swallowed
            swallowed = threading.Event()
            threading.Thread(target=self._replies, args=(upstream, client, muted, swallowed), daemon=True).start()
            threading.Thread(target=self._requests, args=(client, upstream, muted, swallowed), daemon=True).start()

    def _replies(self, upstream, client, muted, swallowed) -> None:
        try:
            while data := upstream.recv(65536):
                if muted.is_set():
                    swallowed.set()
                    continue
                client.sendall(data)
        except OSError:
            pass

    def _requests(self, client, upstream, muted, swallowed) -> None:
        import socket

        with client, upstream:
            try:
                while data := client.recv(65536):
                    mode = self._take(data)
                    if mode is None:
                        upstream.sendall(data)
                        continue
                    if self._barrier is not None:
                        self._barrier.wait(timeout=10)
                    if mode == "apply":
                        muted.set()
                        upstream.sendall(data)
                        swallowed.wait(timeout=10)  # Redis answered: it has run the command
                    client.shutdown(socket.SHUT_RDWR)
                    return
            except OSError:
                return
