"""Redis Cluster as hotcache's Redis: the client (HOTCACHE['REDIS_CLUSTER']), its own errors, and its nodes.

redis-py's ``RedisCluster`` keeps one connection pool per node. hotcache builds it from HOTCACHE['REDIS_URL'] with
the single-server client's settings (short timeouts, no retries below the health gate, TLS and credentials from the
URL) and its pools use the metered connection class, so the meter counts commands, round trips and billed
commands per node as it does for one server. redis-py's ``rediss://`` parsing sets ``SSLConnection`` over any
``connection_class`` passed in, so the metered class is applied by the pool class instead.

Health per node: every node has a health gate of its own (``redis_gate.node(address)``). Inside
``hotcache.backends.redis.call`` a ``NodeCalls`` record is current for the thread: a node's pool asks that node's
gate before it hands out a connection (``NodeGateOpen`` when it is open: nothing is sent, the call falls back),
and the node's connections note whether it answered or failed; at the end of the call each node's gate gets its
own verdict. So a dead master sends only its slots' work to the fallbacks. MOVED and ASK are followed by
redis-py. CLUSTERDOWN and TRYAGAIN (an election, a slot migration) are raised as ``ClusterStateRefusal`` instead
of redis-py's own handling (which sleeps inside the call) and retried by ``HotcacheCluster`` within the call's
budget (REDIS_SOCKET_TIMEOUT); past it they count as that node's server state. A call turned away by a node's
gate refreshes the slot table (at most once per REFRESH_INTERVAL), so once a replica has taken over the slots
go to it without waiting for the dead node's cool-down.

Some of the cluster client's errors are not ``RedisError`` subclasses (``RedisClusterException``: no node
reachable, a slot no node serves, keys of one call on different slots, a command refused in a cluster
pipeline): ``hotcache.backends.errors.classify`` sorts them for ``hotcache.backends.redis.call``, the one boundary.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.policies import (  # type: ignore[attr-defined]  # redis-py re-exports them without __all__
    BasePolicyResolver,
    CommandPolicies,
    PolicyResolver,
    RequestPolicy,
    ResponsePolicy,
    StaticPolicyResolver,
)
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.retry import Retry

from hotcache import clock
from hotcache.backends import errors, handshake
from hotcache.backends.errors import ClusterStateRefusal, NodeGateOpen
from hotcache.backends.health import HealthGate, redis_gate
from hotcache.conf import hotcache_settings

__all__ = [
    "REFRESH_INTERVAL",
    "RETRY_PAUSE",
    "ClusterReport",
    "HotcacheCluster",
    "NodeCalls",
    "NodeReport",
    "begin_calls",
    "build",
    "describe",
    "end_calls",
    "node_commands",
    "per_master",
    "send_once",
    "single_server_on_cluster",
    "url_problems",
]

SLOTS = 16384
SCHEMES = ("redis", "rediss")
RETRY_PAUSE = 0.05  # seconds between attempts of a command refused with CLUSTERDOWN / TRYAGAIN
REFRESH_INTERVAL = 1.0  # seconds: at most one slot-table refresh this often, asked by calls a node's gate turned away

_ANSWERED = "answered"
_sent_lock = threading.Lock()
_sent_per_node: dict[str, int] = {}  # commands this process sent to each node (metered, per address)


def node_commands() -> dict[str, int]:
    """Commands this process sent to each cluster node since it started (the meter's count, split by node)."""
    with _sent_lock:
        return dict(_sent_per_node)


def _count_sent(address: str, n: int) -> None:
    with _sent_lock:
        _sent_per_node[address] = _sent_per_node.get(address, 0) + n
_calls = threading.local()  # .current: the NodeCalls of the call() running on this thread, if any


class NodeCalls:
    """The cluster nodes one ``call()`` reached: whose gate let it through, and how each answered.

    A node's gate is asked once per call (a probing gate lets exactly one caller through, and one call may take
    several connections to a node). At the end, ``settle()`` gives each node's gate its own verdict: answered
    (a reply, an error reply of the call itself, MOVED, ASK) is a success; the node's last failure is judged as
    errors.classify says; a node let through but never reached is abandoned (a probe is never left hanging).
    """

    __slots__ = ("allowed", "deadline", "deletion", "outcomes", "past", "previous")

    def __init__(self, *, deletion: bool, budget: float) -> None:
        self.deletion = deletion
        self.deadline = clock.monotonic() + budget
        self.allowed: dict[str, HealthGate] = {}
        self.past: dict[str, HealthGate] = {}  # a deletion sent past a gate opened by a server state
        self.outcomes: dict[str, object] = {}  # address -> _ANSWERED | the node's last error
        self.previous: NodeCalls | None = None

    def enter(self, address: str) -> None:
        """Before a connection to ``address`` is handed out: raise NodeGateOpen unless its gate lets us in."""
        if address in self.allowed or address in self.past:
            return
        gate = redis_gate.node(address)
        if self.deletion and gate.answering():
            self.past[address] = gate
            return
        if not gate.allow():
            raise NodeGateOpen(address)
        self.allowed[address] = gate

    def note(self, address: str, error: BaseException | None) -> None:
        """A reply from ``address`` (``error`` None, or an error reply of the call itself, MOVED, ASK) or its
        failure. A failure stays noted for the call even when a retry on the node answered later."""
        if error is None or isinstance(error, MovedError | AskError) or errors.classify(error).kind == errors.CALL:
            self.outcomes.setdefault(address, _ANSWERED)
        else:
            self.outcomes[address] = error

    def settle(self, *, failed: bool) -> bool:
        """Give each node's gate its verdict; True when a node failed (the call's failure is that node's).

        When the call succeeded, a node that failed first and answered a retry later (CLUSTERDOWN retried within
        the budget) gets a success, as the single server's gate does for a call that succeeded.
        """
        blamed = False
        for address, gate in self.allowed.items():
            outcome = self.outcomes.get(address)
            if outcome is None:
                gate.abandon()
            elif isinstance(outcome, BaseException) and failed:
                gate.judge(outcome, errors.classify(outcome))
                blamed = True
            else:
                gate.success()
        for address, gate in self.past.items():
            outcome = self.outcomes.get(address)
            if isinstance(outcome, BaseException):
                gate.judge(outcome, errors.classify(outcome), report=False)
                blamed = True
        self.allowed, self.past = {}, {}  # settled once: a second settle() judges nothing twice
        return blamed

    def abandon(self) -> None:
        """The caller's own code raised: no verdict on any node, and no probe left hanging."""
        for gate in self.allowed.values():
            gate.abandon()


def begin_calls(client: Any, *, deletion: bool) -> NodeCalls | None:
    """Make a NodeCalls current for this thread when ``client`` is a cluster client (None otherwise: a single
    server costs one isinstance). Its budget for CLUSTERDOWN / TRYAGAIN retries is REDIS_SOCKET_TIMEOUT, what
    the call would wait for a reply anyway."""
    if not _is_cluster(client):
        return None
    calls = NodeCalls(deletion=deletion, budget=float(hotcache_settings.REDIS_SOCKET_TIMEOUT))
    calls.previous = getattr(_calls, "current", None)
    _calls.current = calls
    return calls


_CLIENT_KINDS: dict[type, bool] = {}  # client class -> a RedisCluster?


def _is_cluster(client: Any) -> bool:
    """``isinstance(client, RedisCluster)``, remembered per class: RedisCluster's metaclass (typing's Protocol
    meta, from redis-py's command mixins) makes every isinstance against it two Python-level hooks, about 1 µs on
    each call. An object posing as another class (a mock with a spec) is checked every time."""
    kind = type(client)
    known = _CLIENT_KINDS.get(kind)
    if known is None:
        known = isinstance(client, RedisCluster)
        if client.__class__ is kind and len(_CLIENT_KINDS) < 64:
            _CLIENT_KINDS[kind] = known
    return known


def end_calls(calls: NodeCalls | None) -> None:
    if calls is not None:
        _calls.current = calls.previous


def _current() -> NodeCalls | None:
    current: NodeCalls | None = getattr(_calls, "current", None)
    return current


@cache
def _node_connection_class(base: type) -> type:
    """``base`` (the metered class) noting each reply or failure for the node's gate (NodeCalls.note), and raising
    CLUSTERDOWN / TRYAGAIN as ClusterStateRefusal so that redis-py does not sleep on them inside the call."""

    class NodeConnection(base):  # type: ignore[misc]  # a base class known at run time only
        def _address(self) -> str:
            return f"{self.host}:{self.port}"

        def connect(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().connect(*args, **kwargs)
            except BaseException as exc:
                _note(self._address(), exc)
                raise

        def send_command(self, *args: Any, **kwargs: Any) -> Any:
            _count_sent(self._address(), 1)
            return super().send_command(*args, **kwargs)

        def pack_commands(self, commands: Any) -> Any:
            commands = list(commands)
            _count_sent(self._address(), len(commands))
            return super().pack_commands(commands)

        def send_packed_command(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().send_packed_command(*args, **kwargs)
            except BaseException as exc:
                _note(self._address(), exc)
                raise

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            calls = _current()
            try:
                response = super().read_response(*args, **kwargs)
            except (ClusterDownError, TryAgainError) as exc:
                if calls is None or isinstance(exc, MasterDownError):
                    if calls is not None:
                        calls.note(self._address(), exc)
                    raise
                code = errors.error_code(exc)
                refusal = ClusterStateRefusal(f"{code} {exc}", status_code=code)
                calls.note(self._address(), refusal)
                raise refusal from exc
            except BaseException as exc:
                if calls is not None:
                    calls.note(self._address(), exc)
                raise
            if calls is not None:
                calls.note(self._address(), None)
            return response

    NodeConnection.__name__ = NodeConnection.__qualname__ = f"Node{base.__name__}"
    return NodeConnection


def _note(address: str, error: BaseException) -> None:
    calls = _current()
    if calls is not None:
        calls.note(address, error)


def startup_urls(url: str) -> list[str]:
    """One URL per node named by ``url``: ``redis://[user:pass@]a:7000,b:7001/0?opts`` names nodes a:7000 and
    b:7001, each with the URL's scheme, credentials, database and options (the form Lettuce and StackExchange
    take). A URL naming one node is returned as it is. A cluster client starts while any listed node answers."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return [url]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    auth, at, hosts = netloc.rpartition("@")
    if "," not in hosts:
        return [url]
    return [f"{scheme}://{auth}{at}{host.strip()}{tail}" for host in hosts.split(",")]


def _host_problems(url: str) -> list[str]:
    """A listed node that is not host[:port] (an empty entry, a port that is not a number)."""
    problems = []
    for one in startup_urls(url):
        parts = urlsplit(one)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname or port == -1:
            problems.append(f"{parts.netloc.rpartition('@')[2]!r} is not a node (host:port).")
    return problems


def url_problems(url: object, *, cluster: bool) -> list[str]:
    """What is wrong with ``url`` as hotcache's Redis URL ([] when nothing is), each naming the fix."""
    if not isinstance(url, str) or "://" not in url:
        return [f"{str(url)[:60]!r} is not a Redis URL: use redis://host:port/0 or rediss://host:port/0 (TLS)."]
    if len(startup_urls(url)) > 1 and not cluster:
        return []  # several nodes without REDIS_CLUSTER: E123 (checks/redis_target.py)
    scheme = url.split("://", 1)[0].lower()
    if scheme not in (*SCHEMES, "unix"):
        return [f"the scheme {scheme!r} is not a Redis scheme: use redis://, rediss:// (TLS) or unix://."]
    if not cluster:
        return []
    if scheme == "unix":
        return ["a cluster is reached over TCP: use redis:// or rediss://, not unix://."]
    if len(startup_urls(url)) > 1 and (bad := _host_problems(url)):
        return bad
    parts = urlsplit(startup_urls(url)[0])
    path_db = parts.path.strip("/")
    query_db = parse_qs(parts.query).get("db", [""])[0]
    problems = []
    for db in (path_db, query_db):
        if db and db != "0":
            problems.append(f"database {db} is in the URL, but a Redis Cluster has only database 0: end it with /0.")
    return problems


def _metered_pool_class(metered_class: Callable[[type], type]) -> type[redis.ConnectionPool]:
    class MeteredPool(redis.ConnectionPool):
        """A node's pool whose connections are the metered subclass of the class the URL asks for; inside a
        call() it asks the node's health gate before handing out a connection."""

        def __init__(self, connection_class: type = redis.Connection, **kwargs: Any) -> None:
            super().__init__(connection_class=_node_connection_class(metered_class(connection_class)), **kwargs)
            self.node_address = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"

        def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            calls = _current()
            if calls is not None:
                calls.enter(self.node_address)
            return super().get_connection(*args, **kwargs)

    return MeteredPool


_KEYED = CommandPolicies(request_policy=RequestPolicy.DEFAULT_KEYED, response_policy=ResponsePolicy.DEFAULT_KEYED)


class _ScriptsByTheirKeys(BasePolicyResolver):
    """EVAL / EVALSHA are routed by their keys (redis-py reads them from the command locally).

    Without this, redis-py's cluster pipeline asks the server (COMMAND GETKEYS, one round trip) for every
    script it queues, only to learn that the script has keys: measured, 12 scripts took 15 round trips.
    """

    def __init__(self, fallback: PolicyResolver | None = None) -> None:
        super().__init__({"core": {"eval": _KEYED, "evalsha": _KEYED}}, fallback or StaticPolicyResolver())

    def with_fallback(self, fallback: PolicyResolver) -> PolicyResolver:
        return _ScriptsByTheirKeys(fallback)


class HotcacheCluster(RedisCluster):
    """RedisCluster whose pipelines route scripts as the client does (redis-py does not pass its policy resolver
    on to ClusterPipeline; tests/cluster/test_pipelines.py counts the round trips, so a change shows)."""

    _refreshed_at = float("-inf")
    _refresh_lock = threading.Lock()

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]  # unannotated in redis-py
        pipe._policy_resolver = self._policy_resolver
        return pipe

    def _execute_command(self, target_node: Any, *args: Any, **kwargs: Any) -> Any:
        """redis-py's, with CLUSTERDOWN / TRYAGAIN retried every RETRY_PAUSE while the call's budget lasts (a
        refused command was not run, so a retry cannot apply it twice); past the budget the refusal is raised."""
        while True:
            try:
                return super()._execute_command(target_node, *args, **kwargs)  # type: ignore[no-untyped-call]
            except ClusterStateRefusal:
                calls = _current()
                if calls is None or clock.monotonic() + RETRY_PAUSE > calls.deadline:
                    raise
                self._pause(RETRY_PAUSE)

    @staticmethod
    def _pause(seconds: float) -> None:
        time.sleep(seconds)

    def refresh_slots(self) -> bool:
        """Re-read the slot table from a live node (one CLUSTER SLOTS), at most once per REFRESH_INTERVAL across
        threads; True when this caller did it. Asked when a node's gate turned a call away: once a replica took
        over the dead node's slots, they go to it at once instead of after the dead node's cool-down."""
        now = clock.monotonic()
        if now - self._refreshed_at < REFRESH_INTERVAL or not self._refresh_lock.acquire(blocking=False):
            return False
        try:
            if now - self._refreshed_at < REFRESH_INTERVAL:
                return False
            self._refreshed_at = now
            try:
                self.nodes_manager.initialize()
            except (RedisError, RedisClusterException, OSError):
                return False  # no node answered: the process gate hears of it from the next call
            return True
        finally:
            self._refresh_lock.release()

    def primary_addresses(self) -> set[str]:
        """host:port of every master the client routes to now."""
        return {node.name for node in self.get_primaries()}  # type: ignore[no-untyped-call]


def build(
    url: str,
    *,
    socket_timeout: float,
    connect_timeout: float,
    metered_class: Callable[[type], type],
    max_connections: int = 50,
    address_remap: Callable[[tuple[str, int]], tuple[str, int]] | None = None,
) -> RedisCluster:
    """hotcache's cluster client for ``url``: any node of the cluster, or several separated by commas
    (``redis://a:7000,b:7001/0``, startup_urls): the client starts while any listed node answers, the others
    are discovered.

    ``address_remap`` (redis-py's): where to connect for a node the cluster announces (host, port), e.g. behind a
    NAT or a proxy per node; the tests' ClusterProxies use it to take nodes down for hotcache only."""
    first, *others = startup_urls(url)
    client = HotcacheCluster(
        url=first,  # scheme, credentials, TLS and options for every node; its node is tried first
        startup_nodes=[ClusterNode(p.hostname, p.port or 6379) for p in map(urlsplit, others)],
        connection_pool_class=_metered_pool_class(metered_class),
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry_on_timeout=False,
        client_name="hotcache",
        **handshake.options({}),  # each node's connections set up in one round trip: HELLO with the name
        max_connections=max_connections,
        # One attempt per call: the health gate decides about retries (a retried INCR would count twice).
        # MOVED and ASK redirections are still followed: they are routing, not failures.
        retry=Retry(NoBackoff(), 0),
        # A slot no node serves fails the calls for that slot only, not the client.
        require_full_coverage=False,
        policy_resolver=_ScriptsByTheirKeys(),
        address_remap=address_remap,
    )
    redis_gate.watch_members(client.primary_addresses)
    return client


def per_master(client: RedisCluster, read: Callable[[redis.Redis], Any]) -> dict[str, Any]:
    """``read(node_client)`` for every master the client routes to, by address: for what answers per node (INFO).
    Run each through ``call()`` of its own when the node's gate should judge it (the overview does)."""
    out: dict[str, Any] = {}
    for node in client.get_primaries():
        out[node.name] = read(client.get_redis_connection(node))
    return out


def close(client: Any) -> None:
    """Close every node's pool (RedisCluster) or the pool (Redis)."""
    if isinstance(client, RedisCluster):
        client.close()
    else:
        client.connection_pool.disconnect()


@dataclass(slots=True)
class NodeReport:
    """One node of the cluster as hotcache_check reports it."""

    address: str
    role: str  # "master" | "replica"
    slots: list[list[int]] = field(default_factory=list)  # [[first, last], ...] a master serves
    master: str = ""  # a replica's master (host:port)
    rtt_ms: float | None = None
    ok: bool = True
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address, "role": self.role, "ok": self.ok}
        if self.role == "master":
            out["slots"] = self.slots
        else:
            out["master"] = self.master
        out["rtt_ms"] = self.rtt_ms
        if self.error:
            out["error"] = self.error
        return out


@dataclass(slots=True)
class ClusterReport:
    nodes: list[NodeReport]
    slots_covered: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "slots_covered": self.slots_covered,
            "masters": sum(1 for n in self.nodes if n.role == "master"),
            "replicas": sum(1 for n in self.nodes if n.role == "replica"),
            "nodes": [n.as_dict() for n in self.nodes],
            "problems": self.problems,
        }


def describe(client: RedisCluster, samples: int = 3) -> ClusterReport:
    """Every node the cluster knows (CLUSTER SHARDS through the client), its role, slots and round trip.

    A node that does not answer PING, a node the cluster marks as failed and any slot no live master serves are
    problems (hotcache_check fails on them).
    """
    shards = client.execute_command("CLUSTER SHARDS")
    nodes: list[NodeReport] = []
    covered = 0
    problems: list[str] = []
    for shard in shards:
        shard = _as_dict(shard)
        ranges = [int(x) for x in shard.get("slots", [])]
        slot_ranges = [[ranges[i], ranges[i + 1]] for i in range(0, len(ranges), 2)]
        members = [_as_dict(n) for n in shard.get("nodes", [])]
        master_address = ""
        for member in members:
            if _text(member.get("role")) == "master":
                master_address = f"{_text(member.get('ip'))}:{member.get('port')}"
        master_alive = False
        for member in members:
            address = f"{_text(member.get('ip'))}:{member.get('port')}"
            role = "master" if _text(member.get("role")) == "master" else "replica"
            node = NodeReport(
                address, role, slot_ranges if role == "master" else [], master_address if role != "master" else ""
            )
            health = _text(member.get("health"))
            _probe(client, node, samples)
            if health == "fail":
                node.ok = False
                node.error = node.error or "the cluster marks this node as failed"
            if not node.ok:
                problems.append(f"{role} {address} is unreachable: {node.error}")
            elif role == "master":
                master_alive = True
            nodes.append(node)
        if master_alive:
            covered += sum(high - low + 1 for low, high in slot_ranges)
    if covered < SLOTS:
        problems.append(f"{SLOTS - covered} of {SLOTS} slots have no live master: their keys cannot be served.")
    nodes.sort(key=lambda n: (n.role != "master", n.address))
    return ClusterReport(nodes, covered, problems)


def _probe(client: RedisCluster, node: NodeReport, samples: int) -> None:
    host, port = node.address.rsplit(":", 1)
    target = client.get_node(host=host, port=int(port))
    owned = None
    if target is not None and target.redis_connection is not None:
        conn = target.redis_connection
    else:
        # A node the client does not route to (a replica): a one-off client with the same connection settings.
        primary = client.get_primaries()[0].redis_connection
        if primary is None:
            node.ok, node.error = False, "the client has no connection settings to probe it with"
            return
        pool = primary.connection_pool
        kwargs = handshake.options({**pool.connection_kwargs, "host": host, "port": int(port)})
        owned = conn = redis.Redis(
            connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        )
    timings = []
    try:
        for _ in range(samples):
            start = time.perf_counter()
            conn.ping()
            timings.append((time.perf_counter() - start) * 1000)
    except (RedisError, RedisClusterException, OSError, NodeGateOpen) as exc:
        node.ok, node.error = False, f"{type(exc).__name__}: {exc}"
        return
    finally:
        if owned is not None:
            owned.close()
    timings.sort()
    node.rtt_ms = round(timings[len(timings) // 2], 3)


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {_text(k): v for k, v in value.items()}
    items = list(value)
    return {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value if value is not None else "")


def single_server_on_cluster(info_cluster: dict[str, Any]) -> bool:
    """Whether INFO cluster of a single-server client's Redis says it is a cluster node (cluster_enabled:1)."""
    return str(info_cluster.get("cluster_enabled", "0")) == "1"


_NOT_RUN = (MovedError, AskError, TryAgainError)  # the node refused before running the command


def send_once(client: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Each command sent once to the node of its keys, all nodes written before any is read (one round trip per
    node, in parallel); replies in order, a command's error in its place.

    redis-py's cluster pipeline re-sends, one by one, every command of a node whose connection failed or timed
    out: a script that may have run would run twice (an INCR counted twice, a give-back given twice). Here a
    command is re-sent only when its node answered that it did not run it (MOVED, ASK, TRYAGAIN), through the
    client, which follows the redirection.
    """
    pipe = client.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command(*args)
    try:
        replies = list(
            pipe.send_cluster_commands(
                pipe._execution_strategy.command_queue, raise_on_error=False, allow_redirections=False
            )
        )
    finally:
        pipe.reset()
    for i, reply in enumerate(replies):
        if isinstance(reply, _NOT_RUN):
            try:
                replies[i] = client.execute_command(*commands[i])
            except RedisError as exc:
                replies[i] = exc
    return replies
