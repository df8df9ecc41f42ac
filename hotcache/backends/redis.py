"""hotcache's Redis access: one client per process, short timeouts, the health gate, metering, Lua scripts.

The client is built from the django-redis alias ``HOTCACHE['REDIS_ALIAS']``: same server, database,
credentials, TLS and connection class (so fakeredis works for the embedded default), in a pool of its
own so hotcache's calls keep their short timeouts (REDIS_SOCKET_TIMEOUT / REDIS_CONNECT_TIMEOUT)
while the host's cache keeps its own, and so every command hotcache sends is counted. With
``HOTCACHE['REDIS_URL']`` it is built from that URL instead, and with ``HOTCACHE['REDIS_CLUSTER']`` it is a
``redis.cluster.RedisCluster`` with the same timeouts and metering (hotcache.backends.cluster).

Features never touch redis-py errors: call() runs a function against the client and turns every
failure (error, timeout, gate open) into RedisUnavailable, which the feature maps to its fallback.

The per-request calls use lean_call() instead: the same gate, metering and errors, on a connection per thread
(hotcache.backends.lean; docs/design/health-gate.md, "The lean path").
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, SlotNotCoveredError
from redis.retry import Retry

from hotcache import metering
from hotcache.backends import cluster, errors, handshake, lean
from hotcache.backends.health import redis_gate
from hotcache.conf import hotcache_settings, hotcache_source
from hotcache.exceptions import RedisUnavailable

__all__ = [
    "Script",
    "after_call",
    "after_call_hook",
    "call",
    "cluster_mode_mismatch",
    "connection_source",
    "eval_lua",
    "failure",
    "get_client",
    "lean_call",
    "lean_connections",
    "reset",
    "run_scripts",
    "send_commands",
    "server_info",
    "wrap_lua",
]

T = TypeVar("T")

log = logging.getLogger("hotcache.redis")
_LUA_DIR = Path(__file__).with_name("lua")
_lock = threading.Lock()
_wire = threading.local()  # .sent: the current call's last command reached the socket
_clients: dict[tuple[str, str, bool, int], redis.Redis] = {}
# The lean path's state (lean_call): (pid, the HOTCACHE dict it was built for, the pooled client, its per-thread
# connections or None where the lean path does not apply: Redis Cluster, a pool with a client-side cache).
_lean_state: tuple[int, object, redis.Redis, lean.Lean | None] | None = None


@cache
def _metered_class(base: type) -> type:
    """A subclass of the alias's connection class that counts commands and round trips as they are sent, and sends
    its name with HELLO (hotcache.backends.handshake)."""

    class Metered(handshake.NameWithHello, base):  # type: ignore[misc]  # a base class known at run time only
        def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
            # Once bytes are on the wire, a failure to read the reply leaves the outcome unknown.
            _wire.sent = False
            super().send_packed_command(*args, **kwargs)
            _wire.sent = True

        def send_command(self, *args: Any, **kwargs: Any) -> None:
            metering.command_sent(args)
            super().send_command(*args, **kwargs)

        def pack_commands(self, commands: Any) -> Any:
            commands = list(commands)
            metering.pipeline_sent(commands)
            return super().pack_commands(commands)

    Metered.__name__ = Metered.__qualname__ = f"Metered{base.__name__}"
    return Metered


def connection_source() -> tuple[type, dict[str, Any], int]:
    """(connection class, connection kwargs, pool size) of hotcache's Redis as configured, before hotcache's own
    timeouts: HOTCACHE['REDIS_URL'] (for a cluster, the first node it names), else the REDIS_ALIAS cache's pool."""
    url = hotcache_settings.REDIS_URL
    if url:
        kwargs = parse_url(cluster.startup_urls(str(url))[0])  # several nodes listed: the first
        return kwargs.pop("connection_class", redis.Connection), kwargs, 50
    from django_redis import get_redis_connection

    source = get_redis_connection(hotcache_settings.REDIS_ALIAS).connection_pool
    max_connections = getattr(source, "max_connections", None) or 50
    return source.connection_class, dict(source.connection_kwargs), max_connections


def _build_client() -> redis.Redis:
    if hotcache_settings.REDIS_CLUSTER:
        # A RedisCluster offers the same command methods; features only call those.
        return cluster.build(  # type: ignore[return-value]
            str(hotcache_settings.REDIS_URL),
            socket_timeout=float(hotcache_settings.REDIS_SOCKET_TIMEOUT),
            connect_timeout=float(hotcache_settings.REDIS_CONNECT_TIMEOUT),
            metered_class=_metered_class,
        )
    connection_class, kwargs, max_connections = connection_source()
    kwargs["socket_timeout"] = float(hotcache_settings.REDIS_SOCKET_TIMEOUT)
    kwargs["socket_connect_timeout"] = float(hotcache_settings.REDIS_CONNECT_TIMEOUT)
    # One attempt per call: the health gate decides about retries, not the socket layer.
    kwargs["retry"] = Retry(NoBackoff(), 0)
    kwargs["retry_on_timeout"] = False
    # Named connections: CLIENT LIST shows which connections (and commands) are hotcache's.
    kwargs.setdefault("client_name", "hotcache")
    kwargs = handshake.options(kwargs)  # set up in one round trip: HELLO with the name, nothing else
    pool = redis.ConnectionPool(
        connection_class=_metered_class(connection_class), max_connections=max_connections, **kwargs
    )
    return redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


def get_client() -> redis.Redis:
    """hotcache's client for this process (rebuilt after fork and when settings change)."""
    target = hotcache_settings.REDIS_URL or f"alias:{hotcache_settings.REDIS_ALIAS}"
    key = (str(target), str(hotcache_settings.REDIS_ALIAS), bool(hotcache_settings.REDIS_CLUSTER), os.getpid())
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _build_client()
                _clients.clear()
                _clients[key] = client
    return client


def reset() -> None:
    """Drop the client and reset the gate (settings changed, or a test wants a clean process state)."""
    global _lean_state
    with _lock:
        state, _lean_state = _lean_state, None
        if state is not None and state[3] is not None:
            state[3].close()
        for client in _clients.values():
            try:
                cluster.close(client)
            except (RedisError, RedisClusterException):
                pass
        _clients.clear()
    redis_gate.reset()


def call(feature: str, fn: Callable[[redis.Redis], T], *, deletion: bool = False) -> T:
    """Run ``fn(client)`` for ``feature`` through the health gate; raise RedisUnavailable on any failure.

    Commands sent by ``fn`` are metered under ``feature``. At most one attempt is made. When the
    connection failed after a command was sent (reply lost, read timeout), the error says
    ``maybe_applied=True``: Redis may have run it. Callers whose fallback would apply the same change
    again (counters) use that to avoid counting twice. When Redis answered with a refusal, it says
    ``answered=True``.

    ``deletion``: ``fn`` only deletes (commands a full Redis never refuses). It is sent even while the gate
    is open because Redis answered that it cannot serve (``redis_gate.answering()``: memory full, read-only),
    as such a Redis still serves reads to every process; it then leaves the gate as it is (a deletion that
    succeeds says nothing about writes), except that a connection failure or timeout is recorded.
    """
    return _through_gate(feature, fn, get_client, deletion)


def lean_call(feature: str, fn: Callable[[Any], T], *, deletion: bool = False) -> T:
    """``call()`` on the lean path (hotcache.backends.lean): ``fn`` gets this thread's ``LeanClient``.

    For the per-request calls (the rate-limit decision, the session and user reads): no pool checkout or lock,
    commands packed once. Gate, metering, timeouts, one attempt and ``maybe_applied`` are call()'s. ``fn`` may use
    only what LeanClient offers (``Script`` calls and ``queue``, ``get``, ``mget``, ``execute_command``,
    ``pipeline(transaction=False)``). On Redis Cluster, and for a thread past the pool's size in per-thread
    connections, it runs on the pooled client exactly as call() does.
    """
    return _through_gate(feature, fn, _lean_client, deletion)


def _lean_client() -> Any:
    """This thread's LeanClient, or the pooled client where the lean path does not apply."""
    state = _lean_state
    if state is None or state[0] != os.getpid() or hotcache_source() is not state[1]:
        state = _build_lean_state()
    per_thread = state[3]
    if per_thread is None:
        return state[2]
    client = per_thread.client()
    return state[2] if client is None else client


def _build_lean_state() -> tuple[int, object, redis.Redis, lean.Lean | None]:
    global _lean_state
    source = hotcache_source()
    client = get_client()
    with _lock:
        state = _lean_state
        if state is not None and state[0] == os.getpid() and state[2] is client:
            # The same pool (HOTCACHE changed elsewhere): its connections are still made right; keep them.
            state = (state[0], source, client, state[3])
            _lean_state = state
            return state
        if state is not None and state[3] is not None:
            state[3].close()  # a parent's (after fork) are left alone: close() checks the pid
        pool = getattr(client, "connection_pool", None)
        usable = (
            not hotcache_settings.REDIS_CLUSTER
            and isinstance(client, redis.Redis)
            and pool is not None
            and getattr(pool, "cache", None) is None  # client-side caching wraps connections in a proxy
        )
        state = (os.getpid(), source, client, lean.Lean(pool) if usable else None)
        _lean_state = state
        return state


def lean_connections() -> int:
    """Per-thread connections the lean path holds open in this process (0 before its first call, on a cluster)."""
    state = _lean_state
    if state is None or state[3] is None or state[0] != os.getpid():
        return 0
    return state[3].open_connections()


def _through_gate(feature: str, fn: Callable[[Any], T], client: Callable[[], Any], deletion: bool) -> T:
    # Past an open gate (never its probe, never counted as turned away), or through it.
    past_gate = deletion and redis_gate.answering()
    if not past_gate and not redis_gate.allow():
        metering.event(feature, "gate_rejected")
        raise RedisUnavailable("redis health gate is open", gate_open=True)
    _wire.sent = False
    nodes = None  # on a cluster: the nodes this call reached, each with a gate of its own (backends.cluster)
    try:
        scope = metering.feature_var.set(feature)  # metering.feature()'s work, without its three calls per call
        try:
            target = client()
            nodes = cluster.begin_calls(target, deletion=deletion)
            result = fn(target)
        finally:
            metering.feature_var.reset(scope)
    except errors.NodeGateOpen as exc:
        raise _node_rejected(feature, exc, nodes, get_client()) from None
    except (RedisError, RedisClusterException, OSError) as exc:
        # RedisClusterException: the cluster client's errors outside RedisError (errors.classify).
        raise _failed(feature, exc, report=not past_gate, nodes=nodes) from exc
    except BaseException:
        if nodes is not None:
            nodes.abandon()
        if not past_gate:
            redis_gate.abandon()  # the caller's own code raised: no verdict on Redis, and never a stuck probe
        raise
    finally:
        cluster.end_calls(nodes)
    if nodes is not None:
        nodes.settle(failed=False)
    if past_gate:
        return result
    redis_gate.success()
    hook = _after_call
    if hook is not None:
        hook()
    return result


def _node_rejected(feature: str, exc: errors.NodeGateOpen, nodes: Any, client: Any) -> RedisUnavailable:
    """A cluster node's gate turned the call away (nothing was sent to that node)."""
    refresh = getattr(client, "refresh_slots", None)
    if refresh is not None:
        refresh()  # a replica may have taken over the node's slots: route them to it from now on
    if nodes is not None:
        nodes.settle(failed=True)  # the nodes reached before it and by the refresh (never a probe left hanging)
    metering.event(feature, "gate_rejected")
    return RedisUnavailable(f"redis node {exc.address}: health gate is open", gate_open=True)


def _failed(
    feature: str, exc: BaseException, *, report: bool = True, sent: bool | None = None, nodes: Any = None
) -> RedisUnavailable:
    """Tell the gate what a failed call says about Redis (hotcache.backends.errors) and build the caller's error.

    Unreachable (refused, reset): the gate opens at once. Timeouts: after HEALTH_FAILURE_THRESHOLD in a row.
    Redis answered it cannot serve (OOM, READONLY, LOADING, CLUSTERDOWN...): after HEALTH_FAILURE_THRESHOLD
    such answers. The provider's quota ran out: at once, for a long cool-down. Any other error reply
    (WRONGTYPE, an unknown command, a request too large) is specific to this call: Redis answered, the gate
    records a success and the error is logged. ``report=False`` (a deletion sent past an open gate): only a
    connection failure or a timeout is recorded. ``sent``: whether the call's last command reached the socket,
    when the caller tracks it (the async path, per task); else this thread's record.

    On a cluster (``nodes``) each node the call reached gets its own verdict, and the process gate only what no
    node accounts for: no node reachable at all (the gate opens at once). A slot no node serves costs nothing
    to send and touches no gate: the slot table is refreshed instead.
    """
    verdict = errors.classify(exc)
    if isinstance(exc, SlotNotCoveredError):
        refresh = getattr(get_client(), "refresh_slots", None)
        if refresh is not None:
            refresh()  # before settle(): the nodes it reaches get their verdicts too
    node_failed = nodes.settle(failed=True) if nodes is not None else False
    if isinstance(exc, SlotNotCoveredError):
        pass
    elif node_failed and not isinstance(exc, RedisClusterException):
        pass  # the node's gate has it
    elif not report or verdict.kind != errors.CALL:
        redis_gate.judge(exc, verdict, report=report)
    else:
        redis_gate.success()  # Redis answered: it is reachable, whatever this call's own error
        log.error("hotcache: redis rejected a %s call: %s", feature, exc)
    if node_failed and report and verdict.kind == errors.CALL:
        log.error("hotcache: redis rejected a %s call: %s", feature, exc)
    metering.event(feature, "redis_error")
    if verdict.server_answered:
        return RedisUnavailable(f"redis refused the call for {feature}: {exc}", answered=True)
    # Once the bytes were on the wire, a failure to read the reply leaves the outcome unknown.
    maybe_applied = bool(getattr(_wire, "sent", False)) if sent is None else sent
    return RedisUnavailable(f"redis call for {feature} failed: {exc}", maybe_applied=maybe_applied)


failure = _failed  # the async path's name for it (hotcache.backends.aredis)

_after_call: Callable[[], None] | None = None


def after_call(hook: Callable[[], None] | None) -> None:
    """Run ``hook`` after every successful call (the meter store's flush check); None removes it."""
    global _after_call
    _after_call = hook


def after_call_hook() -> Callable[[], None] | None:
    """The hook after_call() set (the async path runs it off the event loop)."""
    return _after_call


# Every script runs inside this prelude, so it reports the commands it ran: ``redis`` is shadowed by a table
# whose call/pcall count each command, the file's body becomes a function, and the reply is
# {count, the body's reply}. A body that fails still reports its count: the error (a redis.call error with its
# own code, e.g. OOM, which the health gate reads; or a Lua error as ERR) comes back as the reply's second
# element and Script.reply() raises it. The prelude ends without a newline, so the file's line numbers are
# kept in error messages. Script.reply() strips the count (callers see the body's reply, or its error raised
# as before) and meters it as billed.
_PRELUDE = (
    "local _hc_redis, _hc_billed = redis, 0 "
    "local redis = setmetatable({"
    "call = function(...) _hc_billed = _hc_billed + 1 return _hc_redis.call(...) end, "
    "pcall = function(...) _hc_billed = _hc_billed + 1 return _hc_redis.pcall(...) end"
    "}, {__index = _hc_redis}) "
    "local function _hc_script() "
)
_POSTLUDE = (
    "\nend\n"
    "local _hc_ok, _hc_reply = pcall(_hc_script)\n"
    "if not _hc_ok and type(_hc_reply) ~= 'table' then\n"
    "  _hc_reply = tostring(_hc_reply)\n"
    "  if not string.match(_hc_reply, '^%u+ ') then _hc_reply = 'ERR ' .. _hc_reply end\n"
    "  _hc_reply = {err = _hc_reply}\n"
    "end\n"
    "return {_hc_billed, _hc_reply}\n"
)


def wrap_lua(source: str) -> str:
    """``source`` as hotcache sends it: inside the counting prelude (see Script.reply)."""
    return f"{_PRELUDE}{source}{_POSTLUDE}"


class Script:
    """A Lua script from hotcache/backends/lua/<name>.lua, run with EVALSHA (EVAL once on NOSCRIPT).

    ``body`` is the text sent to the server (the file inside the counting prelude) and ``sha`` its SHA1.
    Every reply of the script, direct or from a pipeline, goes through reply(): it meters the commands the
    script ran as billed and returns what the file's ``return`` gave.
    """

    _cache: dict[str, tuple[str, str]] = {}

    def __init__(self, name: str) -> None:
        cached = self._cache.get(name)
        if cached is None:
            body = wrap_lua((_LUA_DIR / f"{name}.lua").read_text(encoding="utf-8"))
            cached = (body, hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest())
            self._cache[name] = cached
        self.name = name
        self.body, self.sha = cached

    def __call__(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        try:
            raw = client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # First use on this server (or after SCRIPT FLUSH / failover): EVAL also caches it server-side.
            raw = client.eval(self.body, len(keys), *keys, *args)
        return self.reply(raw)

    def queue(self, pipe: Any, keys: Sequence[str], args: Sequence[Any] = (), *, load: bool = False) -> None:
        """Add this script to a pipeline (EVALSHA; EVAL with ``load``); pass its result to reply().

        Queued with ``execute_command``: redis-py's cluster pipeline blocks its ``evalsha`` method outright,
        while the command itself is routed by its keys (which must share a slot, checked before sending).
        """
        if load:
            pipe.execute_command("EVAL", self.body, len(keys), *keys, *args)
        else:
            pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

    @staticmethod
    def reply(raw: Any) -> Any:
        """The script's own reply from what the server sent ({count, reply}); meters ``count`` as billed.

        The script's own error (it reports its count too) is raised, as redis-py raises a failed EVALSHA. A
        pipeline's error in place of the reply (NoScriptError, a refused EVALSHA) is returned unchanged.
        """
        if isinstance(raw, list) and raw and isinstance(raw[0], int):
            metering.meter.billed(raw[0])
            reply = raw[1] if len(raw) > 1 else None
            if isinstance(reply, Exception):
                raise reply
            return reply
        if isinstance(raw, Exception):
            return raw
        msg = f"a hotcache script reply without its command count: {raw!r} (a script not run through Script?)"
        raise TypeError(msg)


def eval_lua(client: redis.Redis, source: str, keys: Sequence[str] = (), args: Sequence[Any] = ()) -> Any:
    """EVAL an inline script (a probe, not a hot path) through the counting prelude; returns its reply."""
    return Script.reply(client.eval(wrap_lua(source), len(keys), *keys, *args))


def run_scripts(client: Any, calls: Sequence[tuple[Script, Sequence[str], Sequence[Any]]]) -> list[Any]:
    """Run several scripts in one pipeline (on Redis Cluster: one round trip per node reached, each script sent
    once: cluster.send_once), each call's keys in one slot.

    The bucket walks of the jobs use it. A call that got NOSCRIPT (first use on that server, or after a
    failover) is sent again with EVAL. Every reply goes through Script.reply(); the first error is raised
    (call() translates it).
    """
    if not calls:
        return []
    out = _send_commands(client, [("EVALSHA", s.sha, len(k), *k, *a) for s, k, a in calls])
    missing = [i for i, raw in enumerate(out) if isinstance(raw, NoScriptError)]
    if missing:
        again = _send_commands(
            client, [("EVAL", calls[i][0].body, len(calls[i][1]), *calls[i][1], *calls[i][2]) for i in missing]
        )
        for i, raw in zip(missing, again, strict=True):
            out[i] = raw
    replies = [Script.reply(raw) for raw in out]
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def send_commands(client: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """``commands`` in one pipeline, each sent once, replies (or a command's error) in order.

    On Redis Cluster: cluster.send_once (one round trip per node reached; a command is re-sent only when its
    node answered that it did not run it). redis-py's cluster pipeline would re-send every command of a node
    whose reply timed out, so a script or counter that had run would run twice. On a single server a plain
    pipeline, which never re-sends. Non-idempotent batches (scripts, INCR/HINCRBY) go through here.
    """
    if isinstance(client, redis.cluster.RedisCluster):
        return cluster.send_once(client, commands)
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return list(pipe.execute(raise_on_error=False))


_send_commands = send_commands  # the name run_scripts used first


def server_info(section: str = "memory") -> dict[str, Any]:
    """INFO <section> through the gate (feature 'status')."""
    return call("status", lambda r: r.info(section))


def cluster_mode_mismatch() -> str | None:
    """A message when a single-server client's Redis is a cluster node (``cluster_enabled:1``), else None.

    That Redis serves only its own slots: every other key gets MOVED and falls back. None too when Redis
    cannot be asked (hotcache_check reports that) or hotcache already uses a cluster client.
    """
    if hotcache_settings.REDIS_CLUSTER:
        return None
    try:
        info = call("status", lambda r: r.info("cluster"))
    except RedisUnavailable:
        return None
    if not cluster.single_server_on_cluster(info):
        return None
    return (
        "hotcache's Redis is a node of a Redis Cluster (INFO cluster says cluster_enabled:1) but hotcache uses a "
        "single-server client: set HOTCACHE['REDIS_CLUSTER'] = True (with HOTCACHE['REDIS_URL'] naming a node)."
    )
