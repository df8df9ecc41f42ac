"""A real Redis Cluster for the tests: 6 Debian ``redis-server`` nodes (3 masters, 3 replicas) on loopback.

``RedisClusterNodes().start()`` picks free loopback ports (each ≤ 55535, since a node's cluster bus listens on
port + 10000), starts every node in a temporary directory of its own (``--cluster-enabled yes``,
``--cluster-node-timeout 2000``, no persistence), joins them with ``redis-cli --cluster create ...
--cluster-replicas 1 --cluster-yes`` and waits, by polling ``CLUSTER INFO`` / ``CLUSTER NODES`` on every node,
until each says ``cluster_state:ok``, knows all nodes, and every replica's link to its master is up. It raises
``ClusterStartError`` (the tests fail, never skip) when a node or the cluster cannot be had. ``close()``
SIGKILLs every node and deletes the directories.

Failover: ``kill(node)`` SIGKILLs one node; ``wait_for_promotion(old_master)`` polls the survivors until a
replica has taken over the old master's slots and every live node says ``cluster_state:ok`` again.

Run standalone: ``python -m tests.support.redis_cluster`` prints the URL and serves until ^C.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

__all__ = [
    "CLUSTER_URL_ENV",
    "ClusterLostReplyProxies",
    "ClusterNode",
    "ClusterProxies",
    "ClusterStartError",
    "NodeInfo",
    "RedisClusterNodes",
    "free_cluster_ports",
    "on_cluster",
    "raw_test_client",
    "warm_every_node",
]

TARGET_ENV = "HOTCACHE_TEST_REDIS_TARGET"  # "cluster": every test runs with hotcache on the session's cluster
CLUSTER_URL_ENV = "HOTCACHE_TEST_CLUSTER_URL"  # set by the redis_cluster fixture once the cluster is up

MAX_PORT = 55535  # the cluster bus port is port + 10000, and must be a valid port too
NODE_TIMEOUT_MS = 2000  # issue 18: failover in a few seconds instead of the default 15 s node timeout's ~20 s
START_TIMEOUT = 60.0
FAILOVER_TIMEOUT = 60.0


def on_cluster() -> bool:
    """Whether this test run has hotcache on the cluster (HOTCACHE_TEST_REDIS_TARGET=cluster)."""
    return os.environ.get(TARGET_ENV) == "cluster"


def raw_test_client() -> Any:
    """A plain client for test set-up and assertions on the Redis hotcache uses in this run: the single test
    server, or (HOTCACHE_TEST_REDIS_TARGET=cluster) a RedisCluster client to the session's cluster."""
    if on_cluster():
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(os.environ[CLUSTER_URL_ENV])
    return redis.Redis.from_url(os.environ["HOTCACHE_TEST_REDIS_URL"])


def warm_every_node() -> None:
    """hotcache's client connected to every master, with every script loaded so far on each (SCRIPT LOAD): what
    a warm-up on one key does for the single server. On a cluster a warm-up reaches one key's node only; an
    operation on another master pays that node's connection handshake and NOSCRIPT + EVAL once, which counts of
    warm round trips do not mean to measure. A no-op on the single server (its scripts loaded there too)."""
    from hotcache.backends import redis as redis_backend

    def load(r: Any) -> None:
        bodies = [body for body, _ in list(redis_backend.Script._cache.values())]
        if not on_cluster():
            for body in bodies:
                r.script_load(body)
            return
        for node in r.get_primaries():
            connection = r.get_redis_connection(node)
            for body in bodies:
                connection.script_load(body)

    redis_backend.call("test", load)


class ClusterStartError(RuntimeError):
    """The test cluster could not be started or did not reach cluster_state:ok."""


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_ports(count: int, *, low: int = 20_000, high: int = MAX_PORT - 10_000) -> list[int]:
    """``count`` loopback ports whose cluster bus ports (port + 10000) are free too, all ≤ MAX_PORT."""
    ports: list[int] = []
    rng = random.Random()
    for _ in range(2000):
        port = rng.randrange(low, high)
        if port in ports or port + 10_000 in ports or port - 10_000 in ports:
            continue
        if _bindable(port) and _bindable(port + 10_000):
            ports.append(port)
            if len(ports) == count:
                return ports
    msg = f"found only {len(ports)} of {count} free loopback port pairs (port, port + 10000) in {low}-{high}"
    raise ClusterStartError(msg)


def _poll(condition: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll another process's state until ``condition()`` holds (nothing in this process to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout:.0f} s waiting for {what}"
            raise ClusterStartError(msg)
        time.sleep(0.05)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One line of CLUSTER NODES, as seen by a live node."""

    node_id: str
    address: str  # host:port
    role: str  # "master" | "replica"
    master_id: str  # "" for a master
    failed: bool
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


def parse_cluster_nodes(text: str) -> list[NodeInfo]:
    nodes = []
    for line in text.strip().splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        flags = set(parts[2].split(","))
        slots = []
        for token in parts[8:]:
            if token.startswith("["):  # a slot being migrated or imported
                continue
            low, _, high = token.partition("-")
            slots.append((int(low), int(high or low)))
        nodes.append(
            NodeInfo(
                node_id=parts[0],
                address=parts[1].split("@", 1)[0],
                role="master" if "master" in flags else "replica",
                master_id="" if parts[3] == "-" else parts[3],
                failed=bool(flags & {"fail", "fail?"}),
                connected=parts[7] == "connected",
                slots=tuple(slots),
            )
        )
    return nodes


class ClusterNode:
    """One cluster-enabled redis-server process."""

    def __init__(self, port: int, home: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.port = port
        self.extra_args = extra_args
        self.dir = home / f"node-{port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            msg = "redis-server is not installed: apt-get install -y redis-server (Debian's, 7.0 or later)"
            raise ClusterStartError(msg)
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
            "--logfile", "redis.log", "--daemonize", "no", *self.extra_args,
        ]  # fmt: skip
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)

    def client(self, timeout: float = 2.0) -> redis.Redis:
        """A plain single-node client (CLUSTER INFO, INFO, CONFIG) that follows no redirection."""
        return redis.Redis(port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def answers(self) -> bool:
        try:
            with self.client(0.5) as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def log_tail(self, chars: int = 2000) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL (a crash: no clean shutdown, no last words to the cluster)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def cluster_info(self) -> dict[str, str]:
        with self.client() as c:
            raw = c.execute_command("CLUSTER", "INFO")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)

    def cluster_nodes(self) -> list[NodeInfo]:
        with self.client() as c:
            raw = c.execute_command("CLUSTER", "NODES")
        if isinstance(raw, dict):  # redis-py may parse the reply into {address: {...}}: ask for the raw text
            raw = c.execute_command("CLUSTER NODES", NEVER_DECODE=True)
        return parse_cluster_nodes(raw.decode() if isinstance(raw, bytes) else str(raw))


class RedisClusterNodes:
    """A 3-master, 3-replica Redis Cluster on loopback (see the module docstring)."""

    def __init__(self, masters: int = 3, replicas_per_master: int = 1, *, extra_args: tuple[str, ...] = ()) -> None:
        """``extra_args``: more redis-server options for every node (``("--cluster-require-full-coverage", "no")``)."""
        self.extra_args = extra_args
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        self.home = Path(tempfile.mkdtemp(prefix="hotcache-cluster-"))
        self.nodes: list[ClusterNode] = []
        self._lock = threading.Lock()

    # --- addresses -----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """A startup node's URL (any live node: the client discovers the others)."""
        node = next((n for n in self.nodes if n.alive), self.nodes[0])
        return f"redis://127.0.0.1:{node.port}/0"

    def live_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive]

    def node(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> RedisClusterNodes:
        total = self.masters * (1 + self.replicas_per_master)
        ports = free_cluster_ports(total)
        self.nodes = [ClusterNode(port, self.home, self.extra_args) for port in ports]
        try:
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                _poll(lambda n=node: n.answers() or not n.alive, f"redis-server on port {node.port}", timeout)
                if not node.alive:
                    msg = f"redis-server on port {node.port} exited while starting:\n{node.log_tail()}"
                    raise ClusterStartError(msg)
            self._create(timeout)
            self.wait_until_ok(timeout=timeout, masters=self.masters)
        except BaseException:
            self.close()
            raise
        return self

    def _create(self, timeout: float) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            msg = "redis-cli is not installed: apt-get install -y redis-tools"
            raise ClusterStartError(msg)
        args = [cli, "--cluster", "create", *(n.address for n in self.nodes),
                "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]  # fmt: skip
        try:
            done = subprocess.run(args, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            msg = f"redis-cli --cluster create did not finish within {timeout:.0f} s"
            raise ClusterStartError(msg) from exc
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace")[-3000:]
            msg = f"redis-cli --cluster create failed (exit {done.returncode}):\n{out}"
            raise ClusterStartError(msg)

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> RedisClusterNodes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- state -----------------------------------------------------------------------------------------

    def topology(self) -> list[NodeInfo]:
        """CLUSTER NODES as a live node sees it."""
        for node in self.live_nodes():
            with contextlib.suppress(redis.RedisError):
                return node.cluster_nodes()
        msg = "no live cluster node answers CLUSTER NODES"
        raise ClusterStartError(msg)

    def masters_info(self) -> list[NodeInfo]:
        return [n for n in self.topology() if n.role == "master" and n.slots and not n.failed]

    def master_for_slot(self, slot: int) -> ClusterNode:
        for info in self.masters_info():
            if any(low <= slot <= high for low, high in info.slots):
                return self.node(info.port)
        msg = f"no master serves slot {slot}"
        raise ClusterStartError(msg)

    def _healthy(self, masters: int) -> bool:
        live = self.live_nodes()
        try:
            for node in live:
                info = node.cluster_info()
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384":
                    return False
            view = live[0].cluster_nodes()
        except redis.RedisError:
            return False
        live_ports = {n.port for n in live}
        serving = [n for n in view if n.role == "master" and n.slots and n.port in live_ports and not n.failed]
        if len(serving) != masters:
            return False
        # Every live replica replicates a live master, with its link up.
        for node in live:
            if node.port in {m.port for m in serving}:
                continue
            try:
                with node.client() as c:
                    repl = c.info("replication")
            except redis.RedisError:
                return False
            if repl.get("role") != "slave" or repl.get("master_link_status") != "up":
                return False
        return True

    def wait_until_ok(self, *, timeout: float = START_TIMEOUT, masters: int | None = None) -> None:
        """Poll every live node until the cluster serves all 16384 slots from ``masters`` live masters."""
        want = self.masters if masters is None else masters
        _poll(lambda: self._healthy(want), f"cluster_state:ok on every live node with {want} masters", timeout)

    # --- failover ----------------------------------------------------------------------------------------

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        """The live nodes replicating ``master`` (as the cluster sees it now)."""
        view = self.topology()
        master_id = next(n.node_id for n in view if n.port == master.port)
        return [self.node(n.port) for n in view if n.master_id == master_id and self.node(n.port).alive]

    def kill_master(self, slot: int = 0) -> tuple[ClusterNode, list[ClusterNode]]:
        """SIGKILL the master serving ``slot``; returns it and its replicas (pass both to wait_for_promotion)."""
        master = self.master_for_slot(slot)
        replicas = self.replicas_of(master)
        master.kill()
        return master, replicas

    def wait_for_promotion(
        self, old_master: ClusterNode, replicas: list[ClusterNode], timeout: float = FAILOVER_TIMEOUT
    ) -> ClusterNode:
        """Poll until one of ``replicas`` serves the old master's slots and the cluster is ok again; returns it."""
        candidates = {r.port for r in replicas}
        promoted: list[ClusterNode] = []

        def done() -> bool:
            if not self._healthy(self.masters):
                return False
            try:
                serving = self.masters_info()
            except ClusterStartError:
                return False
            found = [self.node(m.port) for m in serving if m.port in candidates]
            promoted[:] = found
            return bool(found)

        _poll(done, f"a replica of {old_master.address} to take over its slots", timeout)
        return promoted[0]

    def restart(self, node: ClusterNode, timeout: float = START_TIMEOUT) -> None:
        """Start a killed node again; its nodes.conf makes it rejoin (a former master comes back as a replica)."""
        node.start()
        _poll(lambda: node.answers() or not node.alive, f"redis-server on port {node.port}", timeout)
        self.wait_until_ok(timeout=timeout)


class ClusterProxies:
    """A loopback proxy (hotcache.testing.RedisProxy) in front of every node of a cluster, for hotcache's client only:
    the nodes keep talking to each other, so no failover starts. ``down()`` drops every connection through the
    proxies and refuses new ones (the whole cluster gone, as ``redis_proxy.down()`` for one server), ``down(port)``
    one node only (a dead master without a failover); ``up()`` reopens. hotcache reaches the nodes through them by
    ``remap`` (redis-py's ``address_remap``, given to hotcache.backends.cluster.build by ``install``)."""

    def __init__(self, cluster: RedisClusterNodes) -> None:
        from hotcache.testing import RedisProxy

        self.cluster = cluster
        self.proxies = {n.port: RedisProxy(f"redis://127.0.0.1:{n.port}/0") for n in cluster.live_nodes()}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{next(iter(self.proxies.values())).port}/0"

    def remap(self, address: tuple[str, int]) -> tuple[str, int]:
        proxy = self.proxies.get(int(address[1]))
        return ("127.0.0.1", proxy.port) if proxy is not None else address

    def install(self, monkeypatch: Any) -> None:
        """Make hotcache's cluster client connect through the proxies (patches cluster.build for this test)."""
        import functools

        from hotcache.backends import cluster as cluster_backend

        remapped = functools.partial(cluster_backend.build, address_remap=self.remap)
        monkeypatch.setattr(cluster_backend, "build", remapped)

    @property
    def is_up(self) -> bool:
        return all(p.is_up for p in self.proxies.values())

    def down(self, port: int | None = None) -> None:
        """Every node, or the one at ``port`` (the node's own port, or its proxy's: what hotcache sees)."""
        for node_port, proxy in self.proxies.items():
            if port is None or port in (node_port, proxy.port):
                proxy.down()

    def up(self, port: int | None = None) -> None:
        for node_port, proxy in self.proxies.items():
            if port is None or port in (node_port, proxy.port):
                proxy.up()

    def close(self) -> None:
        self.down()


class ClusterLostReplyProxies:
    """tests.support.lost_reply.LostReplyProxy for a cluster: one in front of every node, armed together (the next
    commands containing ``needle`` lose their reply on whichever node receives them; ``lost`` and ``faults`` count
    across nodes). hotcache reaches the nodes through them as with ClusterProxies (``install``)."""

    def __init__(self, cluster: RedisClusterNodes) -> None:
        from tests.support.lost_reply import FaultPlan, LostReplyProxy

        self.plan = FaultPlan()  # every node's proxy takes from the one armed list
        self.proxies: dict[int, Any] = {
            node.port: LostReplyProxy(f"redis://127.0.0.1:{node.port}/0", self.plan) for node in cluster.live_nodes()
        }

    @property
    def url(self) -> str:
        return str(next(iter(self.proxies.values())).url)

    def remap(self, address: tuple[str, int]) -> tuple[str, int]:
        proxy = self.proxies.get(int(address[1]))
        if proxy is None:
            return address
        return ("127.0.0.1", int(proxy.url.rsplit(":", 1)[1].split("/", 1)[0]))

    install = ClusterProxies.install

    def arm(self, needle: bytes, *modes: str, together: int = 1) -> None:
        self.plan.arm(needle, *modes, together=together)

    @property
    def lost(self) -> list[str]:
        """The modes used so far, in order, on any node."""
        return self.plan.lost

    @property
    def faults(self) -> int:
        return len(self.plan.lost)

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()


def main() -> None:
    from tests.support.processes import serve_until_signalled

    cluster = RedisClusterNodes().start()
    print(cluster.url, " ".join(n.address for n in cluster.nodes), flush=True)
    serve_until_signalled(cluster.close)


if __name__ == "__main__":
    main()
