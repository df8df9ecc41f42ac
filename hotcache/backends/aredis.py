"""hotcache's Redis path for async code (ASGI): ``redis.asyncio`` on the event loop, no thread hop per call.

The same contract as hotcache.backends.redis.call(), awaited: the same health gate (the one ``redis_gate``;
its lock guards a few assignments and is never held across I/O, so taking it on the event loop does not
block), the same metering (commands and round trips counted on the connections, billed commands from the
scripts' counting prelude through ``Script.reply``), the same timeouts, TLS and credentials (the sync client's
connection source, mapped to redis.asyncio's classes), one attempt per call, EVAL on NOSCRIPT, and the same
lost-reply answer (``maybe_applied`` once the bytes were on the wire).

A redis.asyncio client is bound to the event loop that created its connections, so there is one client (and
pool) per loop, built on first use and dropped with the loop. Where this path cannot serve, ``client()``
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

import redis.asyncio as aredis
from asgiref.sync import AsyncToSync
from redis.asyncio import connection as aconnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from hotcache import metering
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import redis_gate
from hotcache.conf import hotcache_settings
from hotcache.exceptions import RedisUnavailable

__all__ = ["acall", "aclose", "client", "reset", "run_script", "supported"]

T = TypeVar("T")

log = logging.getLogger("hotcache.redis")

# Whether the current call's last command reached the socket: per task (a contextvar), as the sync path's is
# per thread, since many calls share the loop's thread.
_sent: contextvars.ContextVar[bool] = contextvars.ContextVar("hotcache_async_sent", default=False)
# loop -> (settings key, client); a client never outlives its loop.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[tuple[Any, ...], aredis.Redis]] = (
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
            await super().send_packed_command(command, check_health)
            _sent.set(True)

        async def send_command(self, *args: Any, **kwargs: Any) -> None:
            metering.meter.commands(1, 1, 1 if args and metering.billable(args[0]) else 0)
            await super().send_command(*args, **kwargs)

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


def _settings_key() -> tuple[Any, ...]:
    target = hotcache_settings.REDIS_URL or f"alias:{hotcache_settings.REDIS_ALIAS}"
    return (
        str(target),
        str(hotcache_settings.REDIS_ALIAS),
        bool(hotcache_settings.REDIS_CLUSTER),
        float(hotcache_settings.REDIS_SOCKET_TIMEOUT),
        float(hotcache_settings.REDIS_CONNECT_TIMEOUT),
        os.getpid(),
    )


class _Unsupported(Exception):
    """This configuration has no async path (the caller takes the sync one)."""


def _build() -> aredis.Redis:
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
    pool = aconnection.ConnectionPool(
        connection_class=_metered_class(twin), max_connections=max_connections, **kwargs
    )
    return aredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


_unsupported_logged: set[str] = set()


def client() -> aredis.Redis | None:
    """This event loop's client (built on first use); None when the configuration has no async path, or when the
    loop is one asgiref made for a single ``async_to_sync`` call (async code under WSGI): a connection opened per
    call would cost its handshake every time, more than the thread hop it saves."""
    loop = asyncio.get_running_loop()
    if loop in AsyncToSync.loop_thread_executors:
        return None
    key = _settings_key()
    held = _clients.get(loop)
    if held is not None and held[0] == key:
        return held[1]
    try:
        built = _build()
    except _Unsupported as why:
        if str(why) not in _unsupported_logged:
            _unsupported_logged.add(str(why))
            log.info("hotcache: no async Redis path for %s; async code uses the sync path in a worker thread", why)
        return None
    _clients[loop] = (key, built)
    return built


def supported() -> bool:
    """Whether async code on this loop gets the native path (False: the sync path in a worker thread)."""
    return client() is not None


async def acall(
    feature: str, fn: Callable[[aredis.Redis], Awaitable[T]], *, deletion: bool = False
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
    if hook is None or not metering.meter.due(int(hotcache_settings.METER_FLUSH_EVERY)):
        return
    if _flushes:
        return  # one already on its way
    future = asyncio.get_running_loop().run_in_executor(None, hook)
    _flushes.add(future)
    future.add_done_callback(_flushes.discard)


async def run_script(
    script: redis_backend.Script, connection: aredis.Redis, keys: Sequence[str], args: Sequence[Any] = ()
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
    if held is not None:
        await held[1].aclose(close_connection_pool=True)


def reset() -> None:
    """Forget every loop's client (settings changed; test isolation); their connections close with them."""
    _clients.clear()
    _unsupported_logged.clear()
