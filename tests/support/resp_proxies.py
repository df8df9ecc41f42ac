"""Loopback proxies in front of a real Redis, each on an asyncio loop of its own thread.

``QuotaProxy`` speaks RESP: it reads each command and, while ``quota_on``, answers it with the provider's quota
error (``-ERR max daily request limit exceeded...``, as Upstash does past the plan's limit) instead of
forwarding it; otherwise it forwards the command and relays the one reply. It keeps the commands each
connection sent (``connections``), so a test sees a new connection's handshake as the server got it.
``DelayProxy`` relays bytes unchanged (TLS passes through) and delivers each chunk ``delay`` seconds after it
arrived, in each direction: a Redis in another region, seen from a loopback address.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any

__all__ = ["UPSTASH_DAILY_QUOTA", "DelayProxy", "QuotaProxy"]

UPSTASH_DAILY_QUOTA = (
    b"ERR max daily request limit exceeded. Limit: 10000, Usage: 10000. "
    b"See https://upstash.com/docs/redis/troubleshooting/max_daily_request_limit for details"
)


class _LoopThread:
    """An asyncio server on 127.0.0.1 (a free port), served from a daemon thread."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port: int = self._server.sockets[0].getsockname()[1]

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # close(): end quietly (Python 3.11's stream callback would report a cancelled task as an error)
        finally:
            self._tasks.discard(task)
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop listening, end every connection, and stop the loop and its thread."""

        async def stop() -> None:
            self._server.close()
            tasks = [t for t in self._tasks if not t.done()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


async def _read_command(reader: asyncio.StreamReader) -> bytes:
    """One client command as sent (redis-py sends arrays of bulk strings); b"" when the client left."""
    line = await reader.readline()
    if not line or not line.startswith(b"*"):
        return line  # end of stream, or an inline command (one line)
    parts = [line]
    for _ in range(int(line[1:-2])):
        header = await reader.readline()
        parts += [header, await reader.readexactly(int(header[1:-2]) + 2)]
    return b"".join(parts)


def _arguments(command: bytes) -> tuple[str, ...]:
    """A command's arguments as text (a command as ``_read_command`` returns it)."""
    if not command.startswith(b"*"):
        return tuple(command.decode("utf-8", "replace").split())
    out = []
    at = command.index(b"\r\n") + 2
    while at < len(command):
        end = command.index(b"\r\n", at)
        size = int(command[at + 1 : end])
        out.append(command[end + 2 : end + 2 + size].decode("utf-8", "replace"))
        at = end + 2 + size + 2
    return tuple(out)


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    """One complete reply (RESP2, and the RESP3 types), as received."""
    line = await reader.readline()
    if not line:
        raise ConnectionError("upstream closed")
    kind, size = line[:1], line[1:-2]
    if kind in (b"$", b"=", b"!"):
        n = int(size)
        return line if n < 0 else line + await reader.readexactly(n + 2)
    if kind in (b"*", b"~", b">", b"%", b"|"):
        n = int(size) * (2 if kind in (b"%", b"|") else 1)
        parts = [line]
        for _ in range(max(n, 0)):
            parts.append(await _read_reply(reader))
        return b"".join(parts)
    return line  # + - : _ , # (


class QuotaProxy(_LoopThread):
    """A RESP proxy that answers every command with ``error`` while ``quota_on``, else relays it to upstream."""

    def __init__(self, upstream_port: int, *, error: bytes = UPSTASH_DAILY_QUOTA, db: int = 0) -> None:
        self._upstream_port = upstream_port
        self.error = error  # the reply's text (without "-"), changeable at any time
        self.quota_on = False
        self.refused = 0  # commands answered with the quota error
        self.connections: list[list[tuple[str, ...]]] = []  # per connection accepted, the commands it sent
        self.url = ""
        super().__init__()
        self.url = f"redis://127.0.0.1:{self.port}/{db}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        sent: list[tuple[str, ...]] = []
        self.connections.append(sent)
        try:
            while command := await _read_command(reader):
                sent.append(_arguments(command))
                if self.quota_on:
                    self.refused += 1
                    writer.write(b"-" + self.error + b"\r\n")
                else:
                    if upstream is None:
                        upstream = await asyncio.open_connection("127.0.0.1", self._upstream_port)
                    upstream[1].write(command)
                    await upstream[1].drain()
                    writer.write(await _read_reply(upstream[0]))
                await writer.drain()
        finally:
            if upstream is not None:
                upstream[1].close()


class DelayProxy(_LoopThread):
    """A TCP relay that delivers every chunk ``delay`` seconds after it arrived, in both directions."""

    def __init__(self, upstream_port: int, *, delay: float = 0.025) -> None:
        self._upstream_port = upstream_port
        self.delay = delay
        super().__init__()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            up_writer.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # the simulated one-way latency itself
                dst.write(data)
                await dst.drain()
            with contextlib.suppress(OSError):
                dst.write_eof()

        sender = asyncio.ensure_future(deliver())
        try:
            while data := await src.read(65536):
                queue.put_nowait((loop.time() + self.delay, data))
        except BaseException:
            sender.cancel()
            raise
        queue.put_nowait((loop.time() + self.delay, b""))
        await sender
