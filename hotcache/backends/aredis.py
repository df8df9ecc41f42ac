"""hotcache's Redis path for async code (ASGI): ``redis.asyncio`` on the event loop, no thread hop per call.

The same contract as hotcache.backends.redis.call(), awaited: the same health gate (the one ``redis_gate``;
its lock guards a few assignments and is never held across I/O, so taking it on the event loop does not
block), the same metering (commands and round trips counted on the connections, billed commands from the
scripts' counting prelude through ``Script.reply``), the same timeouts, TLS and credentials (the sync client's
connection source, mapped to redis.asyncio's classes), one attempt per call, EVAL on NOSCRIPT, and the same
lost-reply answer (``maybe_applied`` once the bytes were on the wire).

A redis.asyncio connection is bound to the event loop that opened it, so each loop has its own connections
(``Lean``: redis-py's async connection class used directly, hiredis packing and parsing, commands packed once, no
pool lock, semaphore, client layers or timeout scope per call; one coroutine per call), made on first use and
dropped with the loop. Where this path cannot serve, ``client()``
returns None and callers take the sync path in a worker thread (``sync_to_async``), as before: a Redis Cluster
(``HOTCACHE['REDIS_CLUSTER']``; redis.asyncio.cluster is not wired yet), connection classes redis.asyncio
has no twin of (fakeredis, custom classes), and the throwaway loops asgiref makes for one ``async_to_sync`` call
(async views or middleware under WSGI). See docs/design/async.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import inspect
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
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
from hotcache.backends import handshake
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

    class AsyncMetered(handshake.AsyncNameWithHello, base):  # type: ignore[misc]  # a base class known at run time only
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            # Once bytes are on the wire, a failure to read the reply leaves the outcome unknown.
            _sent.set(False)
            timeout: float | None = getattr(self, "socket_timeout", None)
            if timeout is None:  # a round trip of Lean._run's: bounded by the loop's _Watch
                await super().send_packed_command(command, check_health)
                _sent.set(True)
                return
            # redis.asyncio bounds a send with asyncio.wait_for, a task (and a loop iteration) per command; the
            # same bound as a timeout scope costs neither. The connection serves one task at a time.
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
            metering.command_sent(args)
            await super().send_command(*args, **kwargs)

        if _HIREDIS_PACKER is not None:

            def pack_command(self, *args: Any) -> Any:
                # The sync path's packer (redis-py's HiredisRespSerializer): hiredis packs the command in C.
                return _HIREDIS_PACKER.pack(*args)

        def pack_commands(self, commands: Any) -> Any:
            commands = list(commands)
            metering.pipeline_sent(commands)
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


# What a loop's client was built for: the settings generation (reset() bumps it; Django's setting_changed for
# HOTCACHE or CACHES calls reset()) and this process (a forked child resets too: no getpid() per call).
_key = (0, os.getpid())


def _forked() -> None:
    reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class _Unsupported(Exception):
    """This configuration has no async path (the caller takes the sync one)."""


class Lean:
    """One event loop's connections to hotcache's Redis, used directly: redis-py's async connection class sends each
    command (``send_packed_command``) and reads each reply (``read_response``, hiredis when installed); no pool lock,
    retry wrapper or client layers per call. At most ``max_connections`` are open at once (the sync pool's size);
    a caller beyond waits for one to come back. A connection that failed mid-call is dropped (never reused
    half-read).

    Per call, what the sync lean path (hotcache.backends.lean) saves too: a free connection is taken without a lock
    or a semaphore (each open connection holds a slot of ``_slots`` for its life, so only opening one takes a
    slot), a command is packed once by the connection's packer and kept (a rate-limit decision for a known client
    is not packed again), and the round trip (send and read) is bounded by one timer of the loop for every call in
    flight (``_Watch``), not a timeout scope (or a ``wait_for`` task) per step.

    The methods hotcache's async paths call: ``execute`` (one command), ``mget``, ``evalsha``/``eval`` and
    ``pipeline`` (commands queued with ``execute_command``, as Script.queue does, sent in one round trip).
    """

    def __init__(self, pool: aconnection.ConnectionPool, max_connections: int) -> None:
        self.connection_pool = pool  # the connection factory (its class and kwargs); never checked out from
        self._free: list[aconnection.AbstractConnection] = []
        self._slots = asyncio.Semaphore(max_connections)  # one per open connection
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()  # callers past the limit
        self._packed: dict[tuple[Any, ...], tuple[list[bytes], int]] = {}
        timeout = pool.connection_kwargs.get("socket_timeout")
        self._watch = _Watch(asyncio.get_running_loop(), timeout) if timeout else None

    async def _run(
        self,
        command: tuple[Any, ...] | None,
        pipeline: list[tuple[Any, ...]] | None,
        script: redis_backend.Script | None = None,
    ) -> Any:
        """``command`` (one reply, an error reply raised) or ``pipeline`` (a reply each, an error reply in its place)
        in one round trip, bounded by the socket timeout. With ``script`` (``command`` is its EVALSHA): EVAL once on
        NOSCRIPT, and the reply through Script.reply.

        One coroutine for the whole call (checkout, send, read, give back): each level of coroutines is crossed
        again when the reply wakes the call. The connection's own timeout is lifted for the round trip
        (redis-py would bound the send with a ``wait_for`` task and the read with a timeout scope); the loop's
        ``_Watch`` bounds it instead."""
        conn = self._free.pop() if self._free else None
        if conn is None or await _stale(conn):
            conn = await self._checkout(conn)
        watch = self._watch
        task = asyncio.current_task() if watch is not None else None
        cancelling = 0
        try:
            if pipeline is None:
                packed, billed = self._pack(conn, command)
                metering.meter.commands(1, 1, billed)
            else:
                packed = conn.pack_commands(pipeline)  # the metered class counts them: n commands, 1 round trip
            if task is not None:
                cancelling = task.cancelling()
                watch.start(task)  # type: ignore[union-attr]  # a task is looked up only with a watch
                conn.socket_timeout = None
            try:
                await conn.send_packed_command(packed, check_health=False)
                if pipeline is None:
                    out: Any = await conn.read_response()
                else:
                    out = []
                    for _ in pipeline:
                        try:
                            out.append(await conn.read_response())
                        except ResponseError as exc:  # read whole: the connection stays in step
                            out.append(exc)
            finally:
                if task is not None:
                    watch.end(task)  # type: ignore[union-attr]
                    conn.socket_timeout = watch.timeout  # type: ignore[union-attr]
        except ResponseError as exc:
            self._pass_on(conn)  # an error reply, read whole: the connection is in step
            if script is None or not isinstance(exc, NoScriptError):
                raise
            # First use on this server (or after SCRIPT FLUSH / failover): EVAL also caches it server-side.
            return await self._run(("EVAL", script.body, *command[2:]), None, script)  # type: ignore[index]
        except asyncio.CancelledError:
            self._dropped()
            await conn.disconnect(nowait=True)  # a reply may be left unread: never reuse this socket
            if task is not None and watch.expired(task, cancelling):  # type: ignore[union-attr]
                where = "reading from socket" if _sent.get() else "writing to socket"
                raise RedisTimeoutError(f"Timeout {where}") from None
            raise
        except BaseException:
            if task is not None:
                watch.forget(task)  # type: ignore[union-attr]
            self._dropped()
            await conn.disconnect(nowait=True)
            raise
        if self._waiting:
            self._pass_on(conn)
        else:
            self._free.append(conn)
        return out if script is None else script.reply(out)

    async def _checkout(self, stale: Any) -> Any:
        """A connection for a caller that found none free (or only ``stale``, which is replaced in its slot)."""
        if stale is not None:
            await stale.disconnect(nowait=True)
            return await self._open(taken=True)
        while True:
            if self._free:
                conn = self._free.pop()
                if not await _stale(conn):
                    return conn
                await conn.disconnect(nowait=True)
                return await self._open(taken=True)
            if not self._slots.locked():
                return await self._open(taken=False)
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._pass_on(waiter.result())  # handed over just as the caller went away
                raise
            if handed is not None:
                return handed  # given back by a call that just used it
            # None: a connection was dropped, its slot is free: open one (or take one given back meanwhile)

    async def _open(self, *, taken: bool) -> Any:
        """A new connection, its handshake done, in a slot already ``taken`` (a stale one's) or in a new one."""
        if not taken:
            await self._slots.acquire()  # never waits: the caller saw a free slot
        try:
            return await _opened(self.connection_pool)
        except BaseException:
            self._dropped()
            raise

    def _dropped(self) -> None:
        """A connection was closed: its slot is free, and a waiting caller may open one."""
        self._slots.release()
        self._pass_on(None)

    def _pass_on(self, handed: Any) -> None:
        """A connection free again (``handed``), or a slot (None): to the longest waiting caller; a connection no
        one waits for goes to the free list."""
        waiting = self._waiting
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(handed)
                return
        if handed is not None:
            self._free.append(handed)

    def _pack(self, conn: Any, command: Any) -> tuple[list[bytes], int]:
        """``command`` packed by the connection's packer, and whether it is billed; kept when short and plain."""
        # Looked up only when plain: 1.0 and True equal 1 and hash alike, so they would find 1's packing.
        plain = _KEEP_TYPES.issuperset(map(type, command))  # in C: no generator per call
        found = self._packed.get(command) if plain else None
        if found is not None:
            return found
        made = ([b"".join(conn.pack_command(*command))], 1 if metering.billable(command[0]) else 0)
        if plain and len(made[0][0]) <= _KEEP_BYTES:
            if len(self._packed) >= _KEEP_COMMANDS:
                self._packed.clear()
            self._packed[command] = made
        return made

    # Plain functions handing back _run's coroutine: awaited as before, without a coroutine of their own (each level
    # of coroutines is crossed again when the reply wakes the call).
    def execute(self, *args: Any) -> Coroutine[Any, Any, Any]:
        """One command, one round trip; an error reply is raised (redis-py's exception class)."""
        return self._run(args, None)

    def mget(self, keys: Sequence[str]) -> Coroutine[Any, Any, list[Any]]:
        return self._run(("MGET", *keys), None)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Coroutine[Any, Any, Any]:
        return self._run(("EVALSHA", sha, numkeys, *keys_and_args), None)

    def eval(self, body: str, numkeys: int, *keys_and_args: Any) -> Coroutine[Any, Any, Any]:
        return self._run(("EVAL", body, numkeys, *keys_and_args), None)

    def ping(self) -> Coroutine[Any, Any, Any]:
        return self._run(("PING",), None)

    def pipeline(self, transaction: bool = False) -> LeanPipeline:
        if transaction:
            raise ValueError("hotcache's async path sends plain pipelines only")
        return LeanPipeline(self)

    async def aclose(self) -> None:
        free, self._free = self._free, []
        for conn in free:
            await conn.disconnect()


# Commands kept packed per loop (then the store starts again), the longest kept, and the argument types kept (never
# a bool or a float equal to a kept int: they pack differently).
_KEEP_COMMANDS = 4096
_KEEP_BYTES = 1024
_KEEP_TYPES = frozenset({str, bytes, int})


async def _opened(pool: aconnection.ConnectionPool) -> Any:
    """A new connection, its handshake done."""
    conn = pool.make_connection()
    try:
        await conn.connect()
    except BaseException:
        # The set-up (HELLO with AUTH and the name, SELECT) failed: the call's own command was never sent.
        _sent.set(False)
        await conn.disconnect(nowait=True)
        raise
    return conn


class _Watch:
    """The bound on every round trip in flight on one loop's connections: each gets the socket timeout (redis-py's
    bound on a read), and one timer of the loop runs at the earliest deadline instead of a timer being made and
    cancelled per call. An expired call's task is cancelled and the call raises redis-py's TimeoutError, as
    asyncio.timeout turns its cancel into TimeoutError (a cancel requested by anyone else stays a cancel)."""

    __slots__ = ("_calls", "_expired", "_handle", "_loop", "timeout")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self.timeout = timeout
        self._calls: dict[asyncio.Task[Any], float] = {}  # task -> its call's deadline (a task awaits one at a time)
        self._expired: set[asyncio.Task[Any]] = set()
        self._handle: asyncio.TimerHandle | None = None

    def start(self, task: asyncio.Task[Any]) -> None:
        deadline = self._loop.time() + self.timeout
        self._calls[task] = deadline
        if self._handle is None:
            self._handle = self._loop.call_at(deadline, self._fire)

    def end(self, task: asyncio.Task[Any]) -> None:
        self._calls.pop(task, None)  # gone already when it expired

    def _fire(self) -> None:
        self._handle = None
        now = self._loop.time()
        nearest: float | None = None
        for task, deadline in list(self._calls.items()):
            if deadline <= now:
                del self._calls[task]
                self._expired.add(task)
                task.cancel()
            elif nearest is None or deadline < nearest:
                nearest = deadline
        if nearest is not None:
            self._handle = self._loop.call_at(nearest, self._fire)

    def expired(self, task: asyncio.Task[Any], cancelling: int) -> bool:
        """Whether the CancelledError ``task`` is handling is this watch's alone (then it is taken back).
        ``cancelling``: the task's cancel requests when its call started."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() <= cancelling

    def forget(self, task: asyncio.Task[Any]) -> None:
        """``task``'s call failed otherwise as it expired: its cancel request is taken back (as asyncio.timeout
        does), and the expiry is not carried to its next call."""
        if task in self._expired:
            self._expired.discard(task)
            task.uncancel()


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
        replies: list[Any] = await self._lean._run(None, commands)
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
    kwargs = handshake.options(kwargs)  # set up as the sync connections are: HELLO with the name, nothing else
    pool = aconnection.ConnectionPool(connection_class=_metered_class(twin), max_connections=max_connections, **kwargs)
    return Lean(pool, max_connections)


_unsupported_logged: set[str] = set()


def client() -> Lean | None:
    """This event loop's connections (made on first use); None when the configuration has no async path, or when
    the loop is one asgiref made for a single ``async_to_sync`` call (async code under WSGI): a connection opened
    per call would cost its handshake every time, more than the thread hop it saves."""
    loop = asyncio.get_running_loop()
    key = _key
    last = _last
    if last[1] is key and last[0]() is loop:  # the per-request case: the loop asked last time
        return last[2]
    held = _clients.get(loop)
    if held is not None and held[0] == key:
        _remember(loop, held[1])
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
    _remember(loop, built)
    return built


def _nothing() -> None:
    return None


# The loop client() answered for last (weakly: a client never outlives its loop), the key it was built for and the
# client: the per-request calls skip the dictionary and the weak reference it makes per lookup.
_last: tuple[Callable[[], asyncio.AbstractEventLoop | None], tuple[int, int] | None, Lean | None] = (
    _nothing,
    None,
    None,
)


def _remember(loop: asyncio.AbstractEventLoop, built: Lean | None) -> None:
    global _last
    _last = (weakref.ref(loop), _key, built)


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


def run_script(
    script: redis_backend.Script, connection: Lean, keys: Sequence[str], args: Sequence[Any] = ()
) -> Coroutine[Any, Any, Any]:
    """``script`` with EVALSHA (EVAL once on NOSCRIPT), its reply through Script.reply (billed commands metered).

    Awaited as before; a plain function handing back the connection's coroutine (one level fewer per call)."""
    return connection._run(("EVALSHA", script.sha, len(keys), *keys, *args), None, script)


async def aclose() -> None:
    """Close this event loop's connections (an ASGI server's shutdown; tests). The next call opens new ones."""
    global _last
    _last = (_nothing, None, None)  # client()'s shortcut would hand back the closed client, its slots still held
    held = _clients.pop(asyncio.get_running_loop(), None)
    if held is not None and held[1] is not None:
        await held[1].aclose()


def reset() -> None:
    """Forget every loop's client (settings changed; test isolation); their connections close with them."""
    global _key, _last
    _key = (_key[0] + 1, os.getpid())
    _last = (_nothing, None, None)
    _clients.clear()
    _unsupported_logged.clear()
