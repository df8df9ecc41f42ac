"""What ``manage.py hotcache_check`` measures of the configured Redis: TCP connect, TLS handshake and round-trip
times, whether hotcache's timeouts fit them, and whether the eviction policy keeps hotcache's keys.

The rule (docs/operations/resilience.md): a timeout fits when it is at least TIMEOUT_MULTIPLE times what it
waits for, measured: REDIS_CONNECT_TIMEOUT covers the TCP connect; REDIS_SOCKET_TIMEOUT covers each reply
and the TLS handshake (redis-py wraps the socket after connecting, under the socket timeout).
Measured on a connection of its own, with generous timeouts, outside the health gate and the meter
(PING, HELLO, AUTH and CLIENT are not billed by the provider).
"""

from __future__ import annotations

import socket
import ssl
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any
from unittest import mock

import redis

from hotcache.backends import handshake
from hotcache.conf import hotcache_settings

__all__ = ["TIMEOUT_MULTIPLE", "Eviction", "Timings", "eviction_advice", "measure"]

TIMEOUT_MULTIPLE = 4
_MEASURE_TIMEOUT = 10.0  # seconds: long enough to measure a slow Redis, not to hang the command forever


@dataclass(frozen=True, slots=True)
class Timings:
    connect_ms: float | None  # TCP connect (None: a unix socket)
    tls_handshake_ms: float | None  # the TLS handshake's network time (under the socket timeout); None: no TLS
    tls_client_setup_ms: float | None  # CPU: redis-py builds an SSLContext (loads the CA store) per new connection
    setup_ms: float  # a whole new connection as hotcache opens it: TCP, TLS, then HELLO (AUTH, SETNAME) [+ SELECT]
    rtt_ms_median: float
    rtt_ms_max: float
    samples: int
    socket_timeout_s: float
    connect_timeout_s: float
    socket_timeout_fits: bool
    connect_timeout_fits: bool
    advice: str  # '' when both fit

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Eviction:
    policy: str  # maxmemory-policy as INFO memory reports it ('?' when the server does not say)
    ok: bool
    advice: str


def measure(samples: int = 20) -> Timings | None:
    """Time the configured Redis; None for an in-process Redis (fakeredis): nothing to time."""
    from hotcache.backends.redis import connection_source

    cls, kwargs, _ = connection_source()  # REDIS_URL (a cluster: the node it names), else the REDIS_ALIAS cache
    if cls.__module__.split(".", 1)[0] == "fakeredis":
        return None
    kwargs.update(socket_timeout=_MEASURE_TIMEOUT, socket_connect_timeout=_MEASURE_TIMEOUT)
    kwargs.setdefault("client_name", "hotcache-check")
    kwargs = handshake.options(kwargs)  # set up as hotcache's own connections are (one round trip)
    connect_ms = tls_ms = tls_client_ms = None
    if "path" not in kwargs:  # TCP (a unix socket has neither a TCP connect nor TLS to time)
        start = time.perf_counter()
        sock = socket.create_connection((kwargs.get("host", "localhost"), kwargs.get("port", 6379)), _MEASURE_TIMEOUT)
        connect_ms = _ms(start)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as redis-py does: no Nagle delay
        try:
            if issubclass(cls, redis.SSLConnection):
                tls_ms, tls_client_ms = _tls_handshake_ms(cls(**kwargs), sock, connect_ms)
        finally:
            sock.close()
    conn = handshake.connection_class(cls)(**kwargs)
    start = time.perf_counter()
    conn.connect()
    setup_ms = _ms(start)
    rtts = []
    try:
        for _ in range(max(1, samples)):
            start = time.perf_counter()
            conn.send_command("PING")
            conn.read_response()
            rtts.append(_ms(start))
    finally:
        conn.disconnect()
    return _verdict(connect_ms, tls_ms, setup_ms, rtts, tls_client_ms=tls_client_ms)


def _tls_handshake_ms(conn: Any, sock: socket.socket, connect_ms: float) -> tuple[float, float]:
    """(handshake, client setup) in ms. The handshake is network time under the socket timeout; the client setup
    (redis-py builds a fresh SSLContext, loading the CA store, for every new connection) is CPU time."""
    spans: list[float] = []
    original = ssl.SSLContext.wrap_socket

    def timed(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> Any:
        begin = time.perf_counter()
        try:
            return original(self, *args, **kwargs)  # the handshake (do_handshake_on_connect)
        finally:
            spans.append(_ms(begin))

    start = time.perf_counter()
    with mock.patch.object(ssl.SSLContext, "wrap_socket", timed):
        if hasattr(conn, "_wrap_socket_with_ssl"):  # redis-py >= 5.1: what it runs right after the TCP connect
            conn._wrap_socket_with_ssl(sock).close()
        else:  # older redis-py: TCP and TLS together
            conn._connect().close()
    total = _ms(start) - (0.0 if hasattr(conn, "_wrap_socket_with_ssl") else connect_ms)
    handshake = spans[-1] if spans else total
    return handshake, max(total - handshake, 0.0)


def _verdict(
    connect_ms: float | None,
    tls_ms: float | None,
    setup_ms: float,
    rtts: list[float],
    *,
    tls_client_ms: float | None = None,
) -> Timings:
    socket_timeout = float(hotcache_settings.REDIS_SOCKET_TIMEOUT)
    connect_timeout = float(hotcache_settings.REDIS_CONNECT_TIMEOUT)
    reply_ms = max(max(rtts), tls_ms or 0.0)
    socket_fits = socket_timeout * 1000 >= TIMEOUT_MULTIPLE * reply_ms
    connect_fits = connect_ms is None or connect_timeout * 1000 >= TIMEOUT_MULTIPLE * connect_ms
    advice = []
    if not socket_fits:
        advice.append(
            f"HOTCACHE['REDIS_SOCKET_TIMEOUT']={socket_timeout} s is under {TIMEOUT_MULTIPLE} x the slowest reply or "
            f"TLS handshake measured ({reply_ms:.1f} ms): ordinary latency will time calls out and open the health "
            f"gate. Set it to at least {_seconds(TIMEOUT_MULTIPLE * reply_ms)}."
        )
    if not connect_fits:
        assert connect_ms is not None
        advice.append(
            f"HOTCACHE['REDIS_CONNECT_TIMEOUT']={connect_timeout} s is under {TIMEOUT_MULTIPLE} x the TCP connect "
            f"measured ({connect_ms:.1f} ms). Set it to at least {_seconds(TIMEOUT_MULTIPLE * connect_ms)}."
        )
    return Timings(
        connect_ms=_round(connect_ms),
        tls_handshake_ms=_round(tls_ms),
        tls_client_setup_ms=_round(tls_client_ms),
        setup_ms=round(setup_ms, 3),
        rtt_ms_median=round(statistics.median(rtts), 3),
        rtt_ms_max=round(max(rtts), 3),
        samples=len(rtts),
        socket_timeout_s=socket_timeout,
        connect_timeout_s=connect_timeout,
        socket_timeout_fits=socket_fits,
        connect_timeout_fits=connect_fits,
        advice=" ".join(advice),
    )


def eviction_advice(policy: str) -> Eviction:
    """Whether ``maxmemory-policy`` keeps hotcache's keys. Every hotcache key has a TTL, so volatile-* policies
    evict them as readily as allkeys-*: only noeviction keeps the exactly-once markers and unsynced counters.
    With it a full Redis refuses writes (OOM), which hotcache treats as an outage: features fall back, nothing
    is lost."""
    if policy == "noeviction":
        return Eviction(policy, True, "")
    if policy == "?":
        return Eviction(policy, True, "the server does not report its eviction policy; make sure it is noeviction")
    return Eviction(
        policy,
        False,
        f"maxmemory-policy is {policy}: when memory fills, Redis deletes keys, and every hotcache key has a TTL, "
        "so hotcache's exactly-once markers and counters not yet synced to MongoDB can vanish (counts lost or "
        "applied twice). Set maxmemory-policy noeviction (Upstash: turn eviction off): a full Redis then refuses "
        "writes and hotcache falls back without losing anything.",
    )


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _seconds(ms: float) -> str:
    return f"{max(ms / 1000, 0.001):.3f} s"
