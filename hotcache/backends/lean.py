"""The lean path for the per-request calls: this thread's own connection, commands packed once, no pool lock.

``hotcache.backends.redis.lean_call()`` hands its function a ``LeanClient`` instead of the pooled client. It
offers the few methods the per-request calls use (``evalsha``/``eval`` for ``Script``, ``get``/``mget``,
``execute_command`` and a non-transactional ``pipeline``), sent on a connection this thread keeps: made like the
pool's (the same metered class, so TLS, credentials, timeouts, the handshake, the meter and the lost-reply flag
are the pool's), packed with redis-py's own packer (``Connection.pack_command``/``pack_commands``, each packed
command kept for reuse: a rate-limit decision for a known client is not packed again) and read with redis-py's
parser (``Connection.read_response``, hiredis when installed). No pool checkout, release or lock per call.

What stays as on the pooled path (``hotcache.backends.redis.call``): the health gate, the meter (commands
sent, round trips and billed commands, counted on the same terms), one attempt per call, the errors (redis-py's
own) and the ``maybe_applied`` flag. A connection that has been idle for ``IDLE_CHECK_SECONDS`` is checked as the
pool checks every checkout (``can_read``: a server that closed it, or unread data) and replaced when stale;
after any failure it is dropped and the next call reconnects.

Fork-safe: connections belong to the process that opened them (``Lean.pid``); a child builds its own and never
writes to a parent's socket. A thread's connection closes when the thread ends; ``close()`` (settings changed,
``reset()``) closes them all. At most ``limit`` connections (the pool's size) are open at once; a thread beyond
that gets None from ``client()`` and its caller uses the pool.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import weakref
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hotcache import metering

__all__ = ["IDLE_CHECK_SECONDS", "Lean", "LeanClient", "LeanPipeline"]

IDLE_CHECK_SECONDS = 1.0  # a connection unused this long is checked before use, as the pool checks a checkout
_PACKED_MAX = 4096  # packed commands kept per client (then the store starts again)
_PACKED_BYTES_MAX = 1024  # longer commands (payloads) are packed per call and not kept
_PLAIN = frozenset({str, bytes, int})  # argument types kept packed (never a bool or float equal to a kept int)
_TIMED_OUT = "Timeout reading from socket"  # redis-py's own message for a read past socket_timeout


def _kernel_timeouts(sock: Any, seconds: float | None) -> bool:
    """Hand the socket's timeout to the kernel (SO_RCVTIMEO/SO_SNDTIMEO on a blocking socket) instead of CPython's
    (a poll() before every send and every receive): the same wait per call, two system calls fewer per round trip.

    Plain TCP and Unix sockets only (a TLS socket keeps CPython's timeout: its reads retry on their own). A read
    past the timeout then fails with EAGAIN, which ``LeanClient`` raises as redis-py's ``TimeoutError``, as the
    pooled path raises it. False (the socket left as it was) where the platform refuses the options.
    """
    if type(sock) is not socket.socket or not seconds or seconds <= 0:
        return False
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    except (OSError, struct.error):
        return False
    sock.settimeout(None)  # blocking: recv/send wait in the kernel, bounded by the options above
    return True


def _as_timeout(exc: BaseException) -> BaseException | None:
    """redis-py's TimeoutError for a kernel timeout (EAGAIN from a blocking socket with SO_RCVTIMEO/SO_SNDTIMEO,
    which redis-py reports as a ConnectionError), so the gate counts it as a timeout, as on the pooled path."""
    if isinstance(exc, RedisConnectionError) and isinstance(exc.__context__, BlockingIOError):
        return RedisTimeoutError(_TIMED_OUT if "reading" in str(exc) else "Timeout writing to socket")
    return None


class _Book:
    """The open connections of one Lean, so close() reaches every thread's and the count stays bounded."""

    __slots__ = ("limit", "lock", "open")

    def __init__(self, limit: int) -> None:
        self.lock = threading.Lock()
        self.open: set[Any] = set()
        self.limit = limit


def _thread_ended(book: _Book, conn: Any) -> None:
    """A thread's slot was freed (the thread ended, or its Lean was dropped): close its connection."""
    with book.lock:
        book.open.discard(conn)
    conn.disconnect()  # in a forked child redis-py only closes its own descriptor, never the parent's socket


class Lean:
    """Per-thread connections for one pooled client, made from the pool's connection class and arguments."""

    def __init__(self, pool: Any) -> None:
        self.pid = os.getpid()
        self._class = pool.connection_class
        self._kwargs = dict(pool.connection_kwargs)
        self._local = threading.local()
        self._book = _Book(int(getattr(pool, "max_connections", 0) or 50))
        self._packed: dict[tuple[Any, ...], bytes] = {}

    def client(self) -> LeanClient | None:
        """This thread's LeanClient (its connection is opened on first use); None past ``limit`` connections."""
        try:
            return self._local.client  # type: ignore[no-any-return]
        except AttributeError:
            return self._new_client()

    def _new_client(self) -> LeanClient | None:
        book = self._book
        with book.lock:
            if len(book.open) >= book.limit:
                return None
            conn = self._class(**self._kwargs)
            book.open.add(conn)
        client = LeanClient(conn, self._packed)
        slot = _Slot(client)
        weakref.finalize(slot, _thread_ended, book, conn)  # also at exit: connections closed, not dropped
        self._local.client = client
        self._local.slot = slot
        return client

    def close(self) -> None:
        """Close every thread's connection (settings changed, reset); the threads open new ones on next use."""
        book = self._book
        with book.lock:
            conns = list(book.open)
            book.open.clear()
        if os.getpid() != self.pid:
            return  # a parent's connections: never touched from a child
        for conn in conns:
            conn.disconnect()

    def open_connections(self) -> int:
        """How many per-thread connections are open (for tests and hotcache_check)."""
        with self._book.lock:
            return len(self._book.open)


class _Slot:
    """What a thread's local holds besides its client: freed when the thread ends, which closes the connection."""

    __slots__ = ("__weakref__", "client")

    def __init__(self, client: LeanClient) -> None:
        self.client = client


class _Commands:
    """The commands the per-request calls send, as redis-py's client and pipeline spell them: each is one
    ``execute_command`` (sent at once by LeanClient, queued by LeanPipeline)."""

    __slots__ = ()

    def execute_command(self, *args: Any, **options: Any) -> Any:
        raise NotImplementedError

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    def get(self, name: str) -> Any:
        return self.execute_command("GET", name)

    def mget(self, keys: Any, *args: Any) -> Any:
        names = [keys] if isinstance(keys, str | bytes) else list(keys)
        return self.execute_command("MGET", *names, *args)


class LeanClient(_Commands):
    """The client methods the per-request calls use, on one thread's connection (see the module docstring).

    Replies are the server's, as redis-py's client returns them for these commands (no response callbacks
    apply to EVALSHA, EVAL, GET and MGET); errors are redis-py's (``NoScriptError``, ``ResponseError``,
    ``ConnectionError``, ``TimeoutError``), raised from the same places.
    """

    __slots__ = ("_conn", "_packed", "_tuned", "_used")

    def __init__(self, conn: Any, packed: dict[tuple[Any, ...], bytes]) -> None:
        self._conn = conn
        self._packed = packed
        self._used = 0.0
        self._tuned: Any = None  # the socket whose timeouts are the kernel's (_kernel_timeouts)

    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute_command("EVAL", script, numkeys, *keys_and_args)

    def pipeline(self, transaction: bool = False) -> LeanPipeline:
        """A pipeline on this connection (no MULTI/EXEC: the per-request calls pipeline independent commands)."""
        if transaction:
            raise ValueError("the lean path sends no MULTI/EXEC: use hotcache.backends.redis.call() for a transaction")
        return LeanPipeline(self)

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Send one command and read its reply: one round trip, metered as the pooled connection meters it."""
        conn = self._ready()
        packed = self._pack(args)
        metering.command_sent(args)
        try:
            conn.send_packed_command(packed)
            return conn.read_response()
        except ResponseError:
            raise  # the reply was read whole: the connection is in step
        except BaseException as exc:
            conn.disconnect()  # a reply may be left unread: never reuse this socket
            timed_out = _as_timeout(exc)
            if timed_out is not None:
                raise timed_out from exc
            raise

    def _ready(self) -> Any:
        """The connection, checked first when it has been idle (as the pool checks every checkout)."""
        conn = self._conn
        now = time.monotonic()
        if now - self._used >= IDLE_CHECK_SECONDS:
            conn.connect()  # a no-op when connected; raises (as a pool checkout does) when Redis is unreachable
            try:
                stale = conn.can_read()  # closed by the server, or data nobody asked for
            except (RedisConnectionError, RedisTimeoutError, OSError):
                stale = True
            if stale:
                conn.disconnect()
            self._tuned = None  # can_read() put CPython's timeout back on the socket
        self._used = now
        sock = conn._sock
        if sock is None or sock is not self._tuned:
            if sock is None:
                conn.connect()  # raises as a pool checkout does when Redis is unreachable
                sock = conn._sock
            self._tuned = sock if _kernel_timeouts(sock, conn.socket_timeout) else None
        return conn

    def _pack(self, args: tuple[Any, ...]) -> Any:
        packed = self._packed
        # Looked up only when plain: 1.0 and True equal 1 and hash alike, so they would find 1's packing (and an
        # unhashable argument is never looked up).
        if not _PLAIN.issuperset(map(type, args)):
            return self._conn.pack_command(*args)
        found = packed.get(args)
        if found is not None:
            return [found]
        chunks = self._conn.pack_command(*args)
        whole = b"".join(chunks)
        if len(whole) <= _PACKED_BYTES_MAX:
            if len(packed) >= _PACKED_MAX:
                packed.clear()
            packed[args] = whole
        return [whole]


class LeanPipeline(_Commands):
    """Commands queued on a LeanClient's connection and sent in one round trip (redis-py's non-transactional
    pipeline on the same terms: packed together by ``pack_commands``, which meters them, every reply read
    before any error is raised)."""

    __slots__ = ("_client", "_commands")

    def __init__(self, client: LeanClient) -> None:
        self._client = client
        self._commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> LeanPipeline:
        self._commands.append(args)
        return self

    def __len__(self) -> int:
        return len(self._commands)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        commands, self._commands = self._commands, []
        if not commands:
            return []
        conn = self._client._ready()
        packed = conn.pack_commands(commands)  # the metered class counts them: n commands, 1 round trip
        replies: list[Any] = []
        try:
            conn.send_packed_command(packed)
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException as exc:
            conn.disconnect()
            timed_out = _as_timeout(exc)
            if timed_out is not None:
                raise timed_out from exc
            raise
        if raise_on_error:
            for number, (args, reply) in enumerate(zip(commands, replies, strict=True), start=1):
                if isinstance(reply, ResponseError):
                    _annotate(reply, number, args)
                    raise reply
        return replies


def _annotate(exc: ResponseError, number: int, args: tuple[Any, ...]) -> None:
    """Name the failing command as redis-py's pipeline does ("Command # 2 (EVALSHA ...) of pipeline ...")."""
    text = " ".join(a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a) for a in args)
    if len(text) > 100:
        text = text[:97] + "..."
    exc.args = (f"Command # {number} ({text}) of pipeline caused error: {exc.args[0] if exc.args else ''}",)
