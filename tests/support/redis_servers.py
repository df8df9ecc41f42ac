"""Throwaway ``redis-server`` processes on free loopback ports, for the states the shared Redis must never be put
in: memory full (``maxmemory`` + ``noeviction``), a read-only replica, TLS. Each is stopped by its fixture.

TLS needs a redis-server built with TLS (Debian's is): ``tls_files(directory)`` makes a throwaway self-signed
certificate with ``openssl req -x509``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

__all__ = ["RedisServer", "TlsFiles", "free_port", "tls_files", "wait_for"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll a server-side condition (a process binding its port, a replica's link coming up) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout:.0f} s waiting for {what}"
            raise RuntimeError(msg)
        time.sleep(0.02)  # another process's progress: nothing in this process to synchronise on


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path


def tls_files(directory: Path) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1 / localhost (it is its own CA)."""
    cert, key = directory / "redis.crt", directory / "redis.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return TlsFiles(cert, key)


class RedisServer:
    """One ``redis-server`` on 127.0.0.1 (no persistence). ``extra`` are more command-line options;
    with ``tls`` it listens for TLS only (``--port 0 --tls-port P``)."""

    def __init__(self, *extra: str, tls: TlsFiles | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            msg = "redis-server is not installed: apt-get install -y redis-server"
            raise RuntimeError(msg)
        self.port = free_port()
        self.tls = tls
        self._dir = tempfile.mkdtemp(prefix="hotcache-redis-")  # a replica's sync writes an RDB file there
        args = [binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self._dir]
        if tls is None:
            args += ["--port", str(self.port)]
        else:
            args += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(tls.cert),
                "--tls-key-file",
                str(tls.key),
                "--tls-ca-cert-file",
                str(tls.cert),
                "--tls-auth-clients",
                "no",
            ]
        self._proc = subprocess.Popen([*args, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for(self._answers, f"redis-server on port {self.port}")
        except RuntimeError:
            self.stop()
            out = self._proc.stdout.read().decode(errors="replace") if self._proc.stdout else ""
            msg = f"redis-server {' '.join(extra)} did not start: {out[-2000:]}"
            raise RuntimeError(msg) from None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A plain client for the test's own commands (CONFIG SET, REPLICAOF, INFO)."""
        if self.tls is None:
            return redis.Redis(port=self.port, socket_timeout=10)
        return redis.Redis(port=self.port, socket_timeout=10, ssl=True, ssl_ca_certs=str(self.tls.cert))

    def _answers(self) -> bool:
        if self._proc.poll() is not None:
            msg = f"redis-server exited with {self._proc.returncode}"
            raise RuntimeError(msg)
        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
