"""A real MongoDB-wire server for the tests: SecantusDB (``secantusd-py``) on a free loopback port.

SecantusDB (PyPI ``secantusdb``, GPL-2.0) is a separate server process; hotcache never imports it.
It reports MongoDB 8.2 (wire version 27) as a single-node replica set ``secantus``: sessions,
retryable writes, TTL and unique indexes, ``serverStatus`` and, with ``--enable-test-commands``,
``configureFailPoint`` (failCommand: errorCode, closeConnection, blockConnection, writeConcernError).

* ``SecantusServer(data_dir=None)``: in memory (an ephemeral WiredTiger home) or a data directory
  that survives ``restart()``. ``start()`` raises ``SecantusStartError`` with the reason and the
  server's log tail: the suite fails, never skips, when the server cannot run.
* ``RealMongo``: what the ``real_mongo`` fixture yields: ``url``, ``database``, ``client()`` (raw
  pymongo for assertions), ``fail_point(...)`` (scoped to hotcache's own connections by appName)
  and ``restart()`` (data-directory servers only).
* ``HOTCACHE_TEST_MONGO_URL=mongodb://...`` points the fixtures at any other server (a real mongod,
  Atlas) instead of starting one; fail points then need that server's test commands.

Run standalone: ``python -m tests.support.secantus [--data-dir D]`` prints the URL and serves until ^C.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pymongo
from pymongo.errors import OperationFailure, PyMongoError

__all__ = [
    "HOTCACHE_APPNAME",
    "RealMongo",
    "SecantusServer",
    "SecantusStartError",
    "external_url",
    "free_port",
    "with_database",
]

EXTERNAL_URL_ENV = "HOTCACHE_TEST_MONGO_URL"
HOTCACHE_APPNAME = "hotcache"  # hotcache.backends.mongo names its client so (appname=); fail points target it
START_TIMEOUT = 60.0  # ~3 s on an idle 2-core machine; generous for a loaded one
STOP_GRACE = 1.0  # SIGTERM, then SIGKILL: an in-memory server has nothing to flush
RESTART_GRACE = 20.0  # a data-directory server checkpoints on SIGTERM (~4 s)
_databases = itertools.count(1)


class SecantusStartError(RuntimeError):
    """The test MongoDB server could not be started or did not answer."""


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def external_url() -> str | None:
    """The server named by HOTCACHE_TEST_MONGO_URL, if set (the fixtures then start none)."""
    return os.environ.get(EXTERNAL_URL_ENV) or None


def with_database(url: str, database: str) -> str:
    """``url`` with ``database`` as its path (options kept)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def _binary() -> list[str]:
    found = shutil.which("secantusd-py", path=str(Path(sys.executable).parent)) or shutil.which("secantusd-py")
    if found is None:
        msg = (
            "SecantusDB is not installed in this environment (no 'secantusd-py' next to "
            f"{sys.executable}): pip install -r requirements/test.txt, or set {EXTERNAL_URL_ENV} to a "
            "running MongoDB server."
        )
        raise SecantusStartError(msg)
    return [found]


class SecantusServer:
    """One ``secantusd-py`` process on 127.0.0.1. In memory unless ``data_dir`` is given."""

    def __init__(self, *, data_dir: Path | None = None, port: int | None = None, test_commands: bool = True) -> None:
        self.data_dir = data_dir
        self._chosen_port = port is None  # a port picked here may be taken by someone else before the bind
        self.port = port or free_port()
        self.test_commands = test_commands
        self._home = Path(tempfile.mkdtemp(prefix="hotcache-secantus-"))  # log, config, its TMPDIR
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def _log_path(self) -> Path:
        return self._home / "secantusd.log"

    def log_tail(self, chars: int = 3000, *, since: int = 0) -> str:
        if not self._log_path.exists():
            return ""
        with self._log_path.open("rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")[-chars:]

    def start(self, timeout: float = START_TIMEOUT) -> SecantusServer:
        if self._proc is not None and self._proc.poll() is None:
            return self
        # A port drawn here may be taken by another process before the server binds it: draw again (only
        # before the first start; a restart must keep the URL its clients know).
        retries = 2 if self._chosen_port and self.starts == 0 else 0
        for attempt in range(retries + 1):
            log_size = self._log_path.stat().st_size if self._log_path.exists() else 0
            try:
                return self._start(timeout)
            except SecantusStartError:
                if attempt == retries or "Address already in use" not in self.log_tail(since=log_size):
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> SecantusServer:
        config = self._home / "secantusd.toml"
        config.write_text("")  # an explicit (empty) config disables auto-discovery of stray secantusd.toml files
        tmp = self._home / "tmp"
        tmp.mkdir(exist_ok=True)
        storage = str(self.data_dir) if self.data_dir is not None else ":memory:"
        args = [
            *_binary(), "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port),
            "--storage-path", storage, "--log-level", "WARNING",
        ]
        if self.test_commands:
            args.append("--enable-test-commands")
        log = open(self._log_path, "ab")  # the child keeps its own descriptor
        # Its own TMPDIR, so an in-memory server's scratch directory goes with ours when it is killed.
        env = {**os.environ, "TMPDIR": str(tmp)}
        try:
            self._proc = subprocess.Popen(args, stdout=log, stderr=log, env=env, start_new_session=True)
        finally:
            log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._proc.poll() is not None:
                msg = (
                    f"SecantusDB exited with status {self._proc.returncode} while starting on port {self.port} "
                    f"({' '.join(args)}):\n{self.log_tail()}"
                )
                self._proc = None
                raise SecantusStartError(msg)
            if time.monotonic() > deadline:
                self.stop()
                msg = f"SecantusDB did not answer on port {self.port} within {timeout:.0f} s:\n{self.log_tail()}"
                raise SecantusStartError(msg)
            time.sleep(0.1)  # polling a child process's port: there is nothing to synchronise on
        return self

    def _answers(self) -> bool:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.url, serverSelectionTimeoutMS=300, connectTimeoutMS=300, directConnection=True
        )
        try:
            return bool(client.admin.command("ping").get("ok"))
        except PyMongoError:
            return False
        finally:
            client.close()

    def stop(self, *, grace: float = STOP_GRACE) -> bool:
        """SIGTERM, then SIGKILL after ``grace`` seconds. True when it exited on SIGTERM (a clean shutdown)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
            return True
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            return False

    def kill(self) -> None:
        """SIGKILL at once (a crash)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def restart(self, *, crash: bool = False) -> None:
        """Stop (cleanly, or SIGKILL with ``crash``) and start again on the same port and data directory."""
        if self.data_dir is None:
            msg = "restart() needs a server with a data directory (an in-memory server restarts empty)"
            raise SecantusStartError(msg)
        if crash:
            self.kill()
        else:
            self.stop(grace=RESTART_GRACE)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._home, ignore_errors=True)

    def __enter__(self) -> SecantusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class RealMongo:
    """A test's own database on a real server: what the ``real_mongo`` fixture yields."""

    url: str  # mongodb://host:port/<database>: what HOTCACHE['MONGO_URL'] is set to
    database: str
    server: SecantusServer | None = None  # None for HOTCACHE_TEST_MONGO_URL (a server this run does not own)
    _clients: list[pymongo.MongoClient[dict[str, Any]]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "real"

    def client(self, **options: Any) -> pymongo.MongoClient[dict[str, Any]]:
        """A raw pymongo client (not hotcache's, not metered) for assertions; closed after the test."""
        options.setdefault("serverSelectionTimeoutMS", 10_000)
        options.setdefault("tz_aware", True)
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.url, appname="hotcache-tests", **options)
        self._clients.append(client)
        return client

    def db(self) -> Any:
        """The test's database through a raw client."""
        return self.client()[self.database]

    @contextlib.contextmanager
    def fail_point(
        self,
        commands: Sequence[str],
        *,
        times: int | None = 1,
        skip: int = 0,
        error_code: int | None = None,
        close_connection: bool = False,
        block_ms: int | None = None,
        write_concern_error: Mapping[str, Any] | None = None,
        error_labels: Sequence[str] | None = None,
        app_name: str | None = HOTCACHE_APPNAME,
    ) -> Iterator[None]:
        """The server's ``failCommand`` fail point for ``commands`` inside the block (``times=None``: always).

        Scoped by default to connections of hotcache's client (appName ``hotcache``), so assertions made
        with ``client()`` are never failed. Switched off when the block exits.
        """
        data: dict[str, Any] = {"failCommands": list(commands)}
        if app_name:
            data["appName"] = app_name
        if error_code is not None:
            data["errorCode"] = error_code
        if close_connection:
            data["closeConnection"] = True
        if block_ms is not None:
            data.update(blockConnection=True, blockTimeMS=int(block_ms))
        if write_concern_error is not None:
            data["writeConcernError"] = dict(write_concern_error)
        if error_labels is not None:
            data["errorLabels"] = list(error_labels)
        mode: Any = "alwaysOn" if times is None else {"times": times, **({"skip": skip} if skip else {})}
        admin = self.client().admin
        try:
            admin.command("configureFailPoint", "failCommand", mode=mode, data=data)
        except OperationFailure as exc:
            msg = (
                f"the MongoDB server at {self.url} refused configureFailPoint ({exc}); fail point tests need "
                "a server started with test commands enabled (SecantusDB --enable-test-commands, mongod "
                "--setParameter enableTestCommands=1)"
            )
            raise AssertionError(msg) from exc
        try:
            yield
        finally:
            admin.command("configureFailPoint", "failCommand", mode="off")

    def restart(self, *, crash: bool = False) -> None:
        """Restart the server from its data directory (``restartable_mongo`` only)."""
        if self.server is None or self.server.data_dir is None:
            msg = "restart() needs the restartable_mongo fixture (a SecantusDB with a data directory)"
            raise RuntimeError(msg)
        self.server.restart(crash=crash)

    def close(self, *, drop: bool = True) -> None:
        if drop:
            with contextlib.suppress(PyMongoError):
                self.client(serverSelectionTimeoutMS=3000).drop_database(self.database)
        for client in self._clients:
            client.close()
        self._clients.clear()


def new_database_name() -> str:
    """A database name unique to this test run and test (runs sharing an external server never collide)."""
    prefix = os.environ.get("HOTCACHE_TEST_PREFIX", f"hct-{os.getpid()}").replace("-", "_")
    return f"{prefix}_{next(_databases)}"[:63]


def main() -> None:
    import argparse

    from tests.support.processes import serve_until_signalled

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    server = SecantusServer(data_dir=args.data_dir, port=args.port)
    server.start()
    print(server.url, flush=True)
    serve_until_signalled(server.close)


if __name__ == "__main__":
    main()
