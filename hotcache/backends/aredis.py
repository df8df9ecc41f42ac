"""hotcache's Redis path for async code (ASGI): ``redis.asyncio`` on the event loop, no thread hop per call.

The same contract as hotcache.backends.redis.call(), awaited: the same health gate (the one ``redis_gate``;
its lock guards a few assignments and is never held across I/O, so taking it on the event loop does not
block), the same metering (commands and round trips counted on the connections, billed commands from the
scripts' counting prelude through ``Script.reply``), the same timeouts, TLS and credentials (the sync client's
connection source, mapped to redis.asyncio's classes), one attempt per call, EVAL on NOSCRIPT, and the same
lost-reply answer (``maybe_applied`` once the bytes were on the wire).

A redis.asyncio connection is bound to the event loop that opened it, so each loop has its own connections
(``Lean``: redis-py's async connection class used directly, hiredis packing and parsing, no pool lock or client
layers per call), made on first use and dropped with the loop. Where this path cannot serve, ``client()``
returns None and callers take the sync path in a worker thread (``sync_to_async``), as before: a Redis Cluster
(``HOTCACHE['REDIS_CLUSTER']``; redis.asyncio.cluster is not wired yet), connection classes redis.asyncio
has no twin of (fakeredis, custom classes), and the throwaway loops asgiref makes for one ``async_to_sync`` call
(async views or middleware under WSGI). See docs/design/async.md.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from asgiref.sync import AsyncToSync, sync_to_async
from redis.asyncio import connection as aconnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

from hotcache import metering
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import redis_gate
from hotcache.conf import hotcache_settings
from hotcache.exceptions import RedisUnavailable

__all__ = ["Lean", "LeanPipeline", "acall", "aclose", "client", "in_thread", "reset", "run_script", "supported"]

T = TypeVar("T")

log = logging.getLogger("hotcache.redis")

# Whether the current call's last command reached the socket: per task (a contextvar), as the sync path's is
# per thread, since many calls share the loop's thread.
_sent: contextvars.ContextVar[bool] = contextvars.ContextVar("hotcache_async_sent", default=False)
# loop -> (settings key, client); a client never outlives its loop.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[tuple[int, int], Lean | None]] = (
    weakref.WeakKeyDictionary()
)
# Background meter flushes started from the loop (kept referenced until done).
_flushes: set[asyncio.Future[None]] = set()

# The sync connection classes redis.asyncio has a twin of, by name (the first found in the class's MRO).
_TWINS: dict[str, type[aconnection.AbstractConnection]] = {
    "SSLConnection": aconnection.SSLConnection,
    "UnixDomainSocketConnection": aconnection.UnixDomainSocketConnection,
    "Connection": aconnection.Connection,
}
_SYNC_MODULES = ("redis.connection",)
_HIREDIS_PACKER = HiredisRespSerializer() if HIREDIS_AVAILABLE else None
# The sync pool's own machinery among its connection kwargs (objects of the sync client): redis.asyncio builds
# its own (its parser, its maintenance-notification handlers).
_SYNC_MACHINERY = frozenset(
    {
        "parser_class",
        "himport_registry",
        "maint_notifications_pool_handler",
        "maint_notifications_config",
        "oss_cluster_maint_notifications_handler",
        "maintenance_state",
        "maintenance_notification_hash",
        "orig_host_address",
        "orig_socket_timeout",
        "orig_socket_connect_timeout",
        "event_dispatcher",
        "redis_connect_func",
        "retry",
    }
)


_metered: dict[type, type] = {}


def _metered_class(base: type) -> type:
    """redis.asyncio's ``base`` counting commands and round trips as they are sent (as the sync path's class)."""
    made = _metered.get(base)
    if made is not None:
        return made

    class AsyncMetered(base):  # type: ignore[misc]  # a base class known at run time only
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            # Once bytes are on the wire, a failure to read the reply leaves the outcome unknown.
            _sent.set(False)
            # redis.asyncio bounds a send with asyncio.wait_for, a task (and a loop iteration) per command; the
            # same bound as a timeout scope costs neither. The connection serves one task at a time.
            timeout: float | None = getattr(self, "socket_timeout", None)
            self.socket_timeout = None
            try:
                async with asyncio.timeout(timeout):
                    await super().send_packed_command(command, check_health)
            except TimeoutError:
                await self.disconnect(nowait=True)
                raise RedisTimeoutError("Timeout writing to socket") from None
            finally:
                self.socket_timeout = timeout
            _sent.set(True)

        async def send_command(self, *args: Any, **kwargs: Any) -> None:
            metering.meter.commands(1, 1, 1 if args and metering.billable(args[0]) else 0)
            await super().send_command(*args, **kwargs)

        if _HIREDIS_PACKER is not None:

            def pack_command(self, *args: Any) -> Any:
                # The sync path's packer (redis-py's HiredisRespSerializer): hiredis packs the command in C.
                return _HIREDIS_PACKER.pack(*args)

        def pack_commands(self, commands: Any) -> Any:
            commands = list(commands)
            billed = sum(1 for c in commands if c and metering.billable(c[0]))
            metering.meter.commands(len(commands), 1, billed)
            return super().pack_commands(commands)

    AsyncMetered.__name__ = AsyncMetered.__qualname__ = f"AsyncMetered{base.__name__}"
    return _metered.setdefault(base, AsyncMetered)


def _twin(sync_class: type) -> type[aconnection.AbstractConnection] | None:
    """redis.asyncio's class for the sync connection class hotcache's client uses; None when there is none."""
    for klass in sync_class.__mro__:
        twin = _TWINS.get(klass.__name__)
        if twin is not None and klass.__module__ in _SYNC_MODULES:
            return twin
    return None


def _accepted(klass: type) -> frozenset[str]:
    """Keyword arguments the async connection class (and its bases) accept."""
    names: set[str] = set()
    for k in klass.__mro__:
        init = k.__dict__.get("__init__")
        if init is not None:
            names.update(p for p in inspect.signature(init).parameters if p not in ("self", "args", "kwargs"))
    return frozenset(names)


def _settings_key() -> tuple[int, int]:
    """What a loop's client was built for: this process, and the settings generation (reset() bumps it; Django's
    setting_changed for HOTCACHE or CACHES calls reset())."""
    return (_generation, os.getpid())


_generation = 0


class _Unsupported(Exception):
    """This configuration has no async path (the caller takes the sync one)."""


class Lean:
    """One event loop's connections to hotcache's Redis, used directly: redis-py's async connection class packs
    each command (its packer) and reads each reply (its parser: hiredis when installed); no pool lock, no retry
    wrapper, no client layers per call. At most ``max_connections`` are in use at once (the sync pool's size);
    a caller beyond waits for one. A connection that failed mid-call is dropped (never reused half-read).

    The methods hotcache's async paths call: ``execute`` (one command), ``mget``, ``evalsha``/``eval`` and
    ``pipeline`` (commands queued with ``execute_command``, as Script.queue does, sent in one round trip).
    """

    def __init__(self, pool: aconnection.ConnectionPool, max_connections: int) -> None:
        self.connection_pool = pool  # the connection factory (its class and kwargs); never checked out from
        self._free: list[aconnection.AbstractConnection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def _run(self, send: Callable[[Any], Awaitable[None]], replies: int) -> Any:
        async with self._slots:
            conn = self._free.pop() if self._free else None
            if conn is not None and await _stale(conn):
                await conn.disconnect(nowait=True)
                conn = None
            if conn is None:
                conn = self.connection_pool.make_connection()
                try:
                    await conn.connect()
                except BaseException:
                    # The handshake (AUTH, CLIENT SETNAME, SELECT) failed: the call's own command was never sent.
                    _sent.set(False)
                    await conn.disconnect(nowait=True)
                    raise
            try:
                await send(conn)
                if replies < 0:
                    out: Any = await conn.read_response()
                else:
                    out = []
                    for _ in range(replies):
                        try:
                            out.append(await conn.read_response())
                        except ResponseError as exc:  # read whole: the connection stays in step
                            out.append(exc)
            except ResponseError:
                self._free.append(conn)  # an error reply, read whole
                raise
            except BaseException:
                await conn.disconnect(nowait=True)
                raise
            self._free.append(conn)
            return out

    async def execute(self, *args: Any) -> Any:
        """One command, one round trip; an error reply is raised (redis-py's exception class)."""

        async def send(conn: Any) -> None:
            await conn.send_command(*args, check_health=False)

        return await self._run(send, -1)

    async def mget(self, keys: Sequence[str]) -> list[Any]:
        reply: list[Any] = await self.execute("MGET", *keys)
        return reply

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return await self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    async def eval(self, body: str, numkeys: int, *keys_and_args: Any) -> Any:
        return await self.execute("EVAL", body, numkeys, *keys_and_args)

    async def ping(self) -> Any:
        return await self.execute("PING")

    def pipeline(self, transaction: bool = False) -> LeanPipeline:
        if transaction:
            raise ValueError("hotcache's async path sends plain pipelines only")
        return LeanPipeline(self)

    async def aclose(self) -> None:
        free, self._free = self._free, []
        for conn in free:
            await conn.disconnect()


async def _stale(conn: Any) -> bool:
    """Whether an idle connection cannot serve a call: the server closed it (an idle timeout, a restart, a load
    balancer) or it holds unread data. redis-py's pool makes the same check before lending a connection; without
    it a closed connection would fail the call and open the gate for a Redis that is fine."""
    try:
        return bool(await conn.can_read())
    except (RedisError, OSError):
        return True


class LeanPipeline:
    """Commands queued with ``execute_command`` and sent in one round trip by ``await execute()``."""

    def __init__(self, lean: Lean) -> None:
        self._lean = lean
        self._commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> LeanPipeline:
        self._commands.append(args)
        return self

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        commands, self._commands = self._commands, []

        async def send(conn: Any) -> None:
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

        replies: list[Any] = await self._lean._run(send, len(commands))
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies


def _build() -> Lean:
    if hotcache_settings.REDIS_CLUSTER:
        raise _Unsupported("a Redis Cluster (redis.asyncio.cluster is not wired yet)")
    sync_class, kwargs, max_connections = redis_backend.connection_source()
    twin = _twin(sync_class)
    if twin is None:
        raise _Unsupported(f"the connection class {sync_class.__module__}.{sync_class.__qualname__}")
    accepted = _accepted(twin) - _SYNC_MACHINERY
    dropped = {k: v for k, v in kwargs.items() if k not in accepted and k not in _SYNC_MACHINERY}
    risky = sorted(k for k, v in dropped.items() if k.startswith(("ssl", "credential", "password", "username")) and v)
    if risky:
        # Never connect with weaker TLS or other credentials than the sync client would.
        raise _Unsupported(f"connection options redis.asyncio does not take: {', '.join(risky)}")
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    kwargs["socket_timeout"] = float(hotcache_settings.REDIS_SOCKET_TIMEOUT)
    kwargs["socket_connect_timeout"] = float(hotcache_settings.REDIS_CONNECT_TIMEOUT)
    # One attempt per call: the health gate decides about retries, not the socket layer.
    kwargs["retry"] = Retry(NoBackoff(), 0)
    kwargs["retry_on_timeout"] = False
    kwargs.setdefault("client_name", "hotcache")
    pool = aconnection.ConnectionPool(connection_class=_metered_class(twin), max_connections=max_connections, **kwargs)
    return Lean(pool, max_connections)


_unsupported_logged: set[str] = set()


def client() -> Lean | None:
    """This event loop's connections (made on first use); None when the configuration has no async path, or when
    the loop is one asgiref made for a single ``async_to_sync`` call (async code under WSGI): a connection opened
    per call would cost its handshake every time, more than the thread hop it saves."""
    loop = asyncio.get_running_loop()
    key = _settings_key()
    held = _clients.get(loop)
    if held is not None and held[0] == key:
        return held[1]
    if loop in AsyncToSync.loop_thread_executors:
        return None
    try:
        built: Lean | None = _build()
    except _Unsupported as why:
        built = None
        if str(why) not in _unsupported_logged:
            _unsupported_logged.add(str(why))
            log.info("hotcache: no async Redis path for %s; async code uses the sync path in a worker thread", why)
    _clients[loop] = (key, built)
    return built


def in_thread(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """``fn`` (sync hotcache code) awaited from async code that has no native path here. On one of asgiref's
    throwaway loops (async code under WSGI) it runs back in the request's own thread (thread-sensitive), whose
    per-thread Redis connection is already open; on a long-lived loop (a Redis Cluster under ASGI) in the loop's
    worker threads, which keep theirs, so requests do not queue behind one thread."""
    throwaway = asyncio.get_running_loop() in AsyncToSync.loop_thread_executors
    return sync_to_async(fn, thread_sensitive=throwaway)


def supported() -> bool:
    """Whether async code on this loop gets the native path (False: the sync path in a worker thread)."""
    return client() is not None


async def acall(
    feature: str, fn: Callable[[Lean], Awaitable[T]], *, deletion: bool = False
) -> T:
    """``await fn(client)`` for ``feature`` through the health gate; RedisUnavailable on any failure.

    hotcache.backends.redis.call() for async code, with the same gate, metering, one attempt and lost-reply
    answer (see there). Call only when client() is not None.
    """
    connection = client()
    if connection is None:
        raise RuntimeError("hotcache: no async Redis path here; check aredis.client() first")
    past_gate = deletion and redis_gate.answering()
    if not past_gate and not redis_gate.allow():
        metering.event(feature, "gate_rejected")
        raise RedisUnavailable("redis health gate is open", gate_open=True)
    _sent.set(False)
    try:
        with metering.feature(feature):
            result = await fn(connection)
    except (RedisError, RedisClusterException, OSError) as exc:
        raise redis_backend.failure(feature, exc, report=not past_gate, sent=_sent.get()) from exc
    except BaseException:
        # The caller's own code raised, or the task was cancelled (the client went away): no verdict on Redis,
        # and never a stuck probe. redis.asyncio drops a connection interrupted mid-command.
        if not past_gate:
            redis_gate.abandon()
        raise
    if past_gate:
        return result
    redis_gate.success()
    _maybe_flush_meter()
    return result


def _maybe_flush_meter() -> None:
    """The meter store's flush check, as the sync path runs after each call; a due flush (a sync Redis call) runs
    in a worker thread, never on the loop: one hop per METER_FLUSH_EVERY commands, not per call."""
    hook = redis_backend.after_call_hook()
    # The setting read once per HOTCACHE dict (the sync store's own derived value), not through Django per call.
    if hook is None or not metering.meter.due(hotcache_settings.derived("meter_flush_every", _flush_every)):
        return
    if _flushes:
        return  # one already on its way
    future = asyncio.get_running_loop().run_in_executor(None, hook)
    _flushes.add(future)
    future.add_done_callback(_flushes.discard)


def _flush_every() -> int:
    return int(hotcache_settings.METER_FLUSH_EVERY)


async def run_script(
    script: redis_backend.Script, connection: Lean, keys: Sequence[str], args: Sequence[Any] = ()
) -> Any:
    """``script`` with EVALSHA (EVAL once on NOSCRIPT), its reply through Script.reply (billed commands metered)."""
    try:
        raw = await connection.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        # First use on this server (or after SCRIPT FLUSH / failover): EVAL also caches it server-side.
        raw = await connection.eval(script.body, len(keys), *keys, *args)
    return script.reply(raw)


async def aclose() -> None:
    """Close this event loop's connections (an ASGI server's shutdown; tests). The next call opens new ones."""
    held = _clients.pop(asyncio.get_running_loop(), None)
    if held is not None and held[1] is not None:
        await held[1].aclose()


def reset() -> None:
    """Forget every loop's client (settings changed; test isolation); their connections close with them."""
    global _generation
    _generation += 1
    _clients.clear()
    _unsupported_logged.clear()
