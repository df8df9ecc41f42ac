"""``hotcache_bench --latency-ms X``: every byte to and from Redis and the database arrives X ms late.

On loopback a Redis round trip costs ~30 µs and a PostgreSQL query ~100 µs, so client overhead dominates and
a design that saves round trips looks no better than one that saves CPU. In a cloud deployment the store
is 0.2-1 ms away each way. This mode puts a TCP relay in front of the Redis the arms use and, when the
default database is a network server (PostgreSQL), in front of it too: each round trip then pays 2 x X ms on
top of its loopback cost, as such a deployment does.

The relay runs in a process of its own (``python -m config.demo.bench.latency HOST PORT DELAY_MS``), so its
work never competes with the measured process for the GIL. Each direction of each connection has a reader
thread (stamps a chunk when it arrives) and a writer thread (sends it ``delay`` later, timed with
``time.sleep``: an asyncio relay cannot add less than ~1 ms, as epoll waits in whole milliseconds).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Delayed", "delayed"]


@dataclass(slots=True)
class Delayed:
    """What ``delayed()`` put in place: the Redis URL to use, and what each relay sits in front of."""

    delay_ms: float
    redis_url: str
    relays: dict[str, str] = field(default_factory=dict)  # "redis" / "database" -> "host:port via 127.0.0.1:port"

    def describe(self) -> str:
        where = "; ".join(f"{k} {v}" for k, v in self.relays.items())
        return f"latency mode: +{self.delay_ms:g} ms each way ({where})"


@contextlib.contextmanager
def delayed(redis_url: str, delay_ms: float, *, say: Callable[[str], Any] = print) -> Iterator[Delayed]:
    """Relays adding ``delay_ms`` each way in front of ``redis_url`` and the default database (when it is a
    network server); yields the Redis URL to use instead. The database connection is re-opened through its
    relay, and put back afterwards."""
    from django.db import connections

    if delay_ms <= 0:
        raise ValueError("--latency-ms must be greater than 0")
    parts = urlsplit(redis_url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"--latency-ms needs a redis:// or rediss:// URL with a host, not {redis_url!r}")
    with contextlib.ExitStack() as stack:
        redis_port = stack.enter_context(_relay(parts.hostname, parts.port or 6379, delay_ms))
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{redis_port}" if auth else f"127.0.0.1:{redis_port}"
        result = Delayed(delay_ms, urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))
        result.relays["redis"] = f"{parts.hostname}:{parts.port or 6379} via 127.0.0.1:{redis_port}"
        db = connections["default"]
        saved = {k: db.settings_dict.get(k) for k in ("HOST", "PORT")}
        host = str(saved["HOST"] or "")
        if db.vendor != "sqlite" and host and not host.startswith("/"):
            db_port = stack.enter_context(_relay(host, int(saved["PORT"] or 5432), delay_ms))
            db.close()
            db.settings_dict.update(HOST="127.0.0.1", PORT=str(db_port))
            stack.callback(db.settings_dict.update, saved)
            stack.callback(db.close)
            result.relays["database"] = f"{host}:{saved['PORT'] or 5432} via 127.0.0.1:{db_port}"
        else:
            result.relays["database"] = f"{db.vendor}, not a network server: not delayed"
        say(result.describe())
        yield result


@contextlib.contextmanager
def _relay(host: str, port: int, delay_ms: float) -> Iterator[int]:
    """A relay process in front of host:port; yields the loopback port it listens on."""
    proc = subprocess.Popen(  # noqa: S603 (our own module, arguments from the command line of this process)
        [sys.executable, "-m", "config.demo.bench.latency", host, str(port), str(delay_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # the relay prints its port once it listens
        if not line.isdigit():
            raise RuntimeError(f"the latency relay for {host}:{port} did not start (exit code {proc.poll()})")
        yield int(line)
    finally:
        proc.kill()
        proc.wait()


def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
    """Copy src to dst, each chunk delivered ``delay`` seconds after it arrived."""
    chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def deliver() -> None:
        with contextlib.suppress(OSError):
            while True:
                due, data = chunks.get()
                if not data:
                    break
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)  # the simulated one-way latency itself
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=deliver, daemon=True)
    writer.start()
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            chunks.put((time.perf_counter() + delay, data))
    chunks.put((0.0, b""))
    writer.join()


def _serve(host: str, port: int, delay_ms: float) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection((host, port))
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(src, dst, delay_ms / 1000), daemon=True).start()


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
