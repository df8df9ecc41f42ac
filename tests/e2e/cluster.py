"""A real deployment on loopback for end-to-end runs: redis-server, a MongoDB server (SecantusDB,
tests/support/secantus.py), gunicorn (2+ workers), a Celery worker and Celery beat, each its own process,
all stopped at the end.

The harness owns this Redis (its own port and data directory), so it can stop and restart it, and its
INFO/CLIENT LIST figures are hotcache's alone. With ``redis_cluster=True`` hotcache's Redis is instead a real
6-node Redis Cluster (tests/support/redis_cluster.py: 3 masters, 3 replicas, 2 s node timeout) whose masters
the scenario kills; the single redis-server then serves only what has no cluster client (Django's cache and
the Celery broker), as the README tells cluster users to deploy. Redis runs with an append-only file fsynced on every
write, as a production Redis that holds unsynced counters should: stopping it loses nothing.
MongoDB failures come from the server itself: a failCommand fail point closes the connection of every
command hotcache's processes send (their client's appName), while the harness's own client still works.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pymongo
import redis

from tests.support.redis_cluster import ClusterNode, RedisClusterNodes
from tests.support.secantus import HOTCACHE_APPNAME, SecantusServer

ROOT = Path(__file__).resolve().parents[2]
# Every command hotcache's MongoDB module sends (hotcache.backends.mongo); the monitors' hello stays up.
HOTCACHE_COMMANDS = ["insert", "update", "delete", "find", "findAndModify", "aggregate", "count", "createIndexes",
                     "listIndexes", "ping", "serverStatus", "dropDatabase", "getMore"]
PY = sys.executable


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll an external process's state (a port, a file); raise naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout}s waiting for {what}"
            raise TimeoutError(msg)
        time.sleep(interval)


class Cluster:
    def __init__(
        self, workdir: Path, *, web_workers: int = 2, cooldown: float = 2.0, redis_cluster: bool = False
    ) -> None:
        self.workdir = workdir
        self.redis_cluster = redis_cluster
        self.redis_nodes: RedisClusterNodes | None = None
        self.web_workers = web_workers
        self.cooldown = cooldown
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis_port = free_port()
        self.web_port = free_port()
        self.mongo_port = free_port()
        self.mongo: SecantusServer | None = None
        self.redis_dir = workdir / "redis"
        self.redis_dir.mkdir(parents=True, exist_ok=True)

    # --- environment ---------------------------------------------------------------------------------
    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def mongo_url(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo_port}/hotcache_e2e"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HOTCACHE_TEST_", "PYTEST"))}
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings.e2e",
            REDIS_URL=self.redis_url,
            MONGO_URL=self.mongo_url,
            DJANGO_DB_PATH=str(self.workdir / "db.sqlite3"),
            HOTCACHE_E2E_COOLDOWN=str(self.cooldown),
            HOTCACHE_E2E_WORKDIR=str(self.workdir),
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
        )
        if self.redis_nodes is not None:
            env["HOTCACHE_E2E_CLUSTER_URL"] = self.redis_nodes.url
        return env

    def _spawn(self, name: str, args: list[str], **kwargs: Any) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            args, cwd=ROOT, env=self.env(), stdout=kwargs.pop("stdout", log), stderr=log,
            start_new_session=True, **kwargs,
        )
        self.procs[name] = proc
        return proc

    def manage(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PY, "manage.py", *args], cwd=ROOT, env=self.env(), capture_output=True, text=True,
            timeout=timeout, check=False,
        )

    # --- Redis ---------------------------------------------------------------------------------------
    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            msg = "redis-server is not installed (apt-get install -y redis-server)"
            raise RuntimeError(msg)
        self._spawn("redis", [
            binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.redis_dir),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction",
        ])
        wait_until(self._redis_ping, 30, "redis-server to answer")

    def _redis_ping(self) -> bool:
        try:
            return bool(self.raw_redis().ping())
        except redis.RedisError:
            return False

    def raw_redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1)

    def stop_redis(self) -> None:
        proc = self.procs.pop("redis")
        proc.send_signal(signal.SIGTERM)  # Redis flushes its AOF and exits
        proc.wait(timeout=15)

    def hotcache_connections(self, node: ClusterNode | None = None) -> list[dict[str, Any]]:
        """CLIENT LIST entries of connections hotcache opened (named 'hotcache'), on the single Redis or on one
        node of the cluster."""
        client = node.client(timeout=1) if node is not None else self.raw_redis()
        try:
            return [c for c in client.client_list() if c.get("name") == "hotcache"]
        finally:
            client.close()

    # --- Redis Cluster (redis_cluster=True) ------------------------------------------------------------
    def start_redis_cluster(self) -> None:
        self.redis_nodes = RedisClusterNodes().start()

    def kill_master(self, slot: int) -> tuple[ClusterNode, list[ClusterNode]]:
        """SIGKILL the master serving ``slot`` (no shutdown, no final replication)."""
        assert self.redis_nodes is not None
        return self.redis_nodes.kill_master(slot)

    # --- MongoDB -------------------------------------------------------------------------------------
    def start_mongo(self) -> None:
        self.mongo = SecantusServer(port=self.mongo_port).start()

    def mongo_admin(self) -> pymongo.MongoClient:
        return pymongo.MongoClient(self.mongo_url, appname="hotcache-e2e", serverSelectionTimeoutMS=5000)

    def mongo_failing(self, failing: bool) -> None:
        """Every command from hotcache's processes loses its connection (a network partition), or not."""
        client = self.mongo_admin()
        try:
            if failing:
                client.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
                    "failCommands": HOTCACHE_COMMANDS, "closeConnection": True, "appName": HOTCACHE_APPNAME})
            else:
                client.admin.command("configureFailPoint", "failCommand", mode="off")
        finally:
            client.close()

    # --- web and Celery ------------------------------------------------------------------------------
    def start_web(self) -> None:
        gunicorn = shutil.which("gunicorn", path=str(Path(PY).parent)) or "gunicorn"
        self._spawn("web", [
            gunicorn, "config.wsgi:application", "--workers", str(self.web_workers), "--bind",
            f"127.0.0.1:{self.web_port}", "--timeout", "60", "--graceful-timeout", "5", "--log-level", "warning",
        ])
        wait_until(self._web_up, 90, "gunicorn to serve")

    def _web_up(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def track_event(self, event: str) -> int:
        """POST one analytics beacon through the web tier; its HTTP status (204 when accepted)."""
        body = json.dumps({"event": event, "path": "/harness"}).encode()
        request = urllib.request.Request(self.base_url + "/hotcache/analytics/track", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except OSError:
            return 0

    def start_worker(self, name: str = "worker") -> None:
        self._spawn(name, [
            PY, "-m", "celery", "-A", "config", "worker", "--concurrency", "2", "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "-n", f"{name}@%h",
        ])

    def kill_worker(self, name: str = "worker") -> None:
        """SIGKILL the worker and its pool children (its own process group)."""
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def start_beat(self) -> None:
        self._spawn("beat", [
            PY, "-m", "celery", "-A", "config", "beat", "--loglevel", "WARNING",
            "-s", str(self.workdir / "celerybeat-schedule"),
        ])

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self.start_redis()
        if self.redis_cluster:
            self.start_redis_cluster()
        self.start_mongo()
        result = self.manage("migrate", "-v0")
        if result.returncode != 0:
            msg = f"migrate failed: {result.stderr[-2000:]}"
            raise RuntimeError(msg)
        self.start_web()
        self.start_worker()
        self.start_beat()

    def stop(self) -> None:
        for name, proc in list(self.procs.items()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            self.procs.pop(name, None)
        if self.mongo is not None:
            self.mongo.close()
            self.mongo = None
        if self.redis_nodes is not None:
            self.redis_nodes.close()
            self.redis_nodes = None

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self, name: str, tail: int = 4000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""
