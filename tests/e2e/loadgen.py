"""The load generator: a separate process that drives a mixed workload at the cluster over loopback.

Threads loop until the duration or the request budget runs out (both bounded). Each request is recorded
with the phase the harness had announced (a file it rewrites) when the request started, its status, and
its latency. Workloads are small classes in tests/e2e/workloads.py. The result is one JSON file.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class Http:
    """A keep-alive HTTP/1.1 client to one loopback host (one per thread)."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            msg = f"the load generator only talks to loopback, not {parts.hostname}"
            raise ValueError(msg)
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        self.conn: http.client.HTTPConnection | None = None
        self.retries = 0  # requests re-sent after a connection error (the first may or may not have arrived)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (ConnectionError, http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                self.retries += 1
        raise AssertionError("unreachable")


class Phase:
    """The current phase, as announced by the harness in a file (re-read every 20 ms by a daemon thread)."""

    def __init__(self, path: Path) -> None:
        self.path, self.value, self._stop = path, "start", threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.value = self.path.read_text().strip() or self.value
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()


def run(base_url: str, fixtures: dict[str, Any], *, duration: float, max_requests: int, threads: int,
        phase_file: Path, seed: int) -> dict[str, Any]:
    from tests.e2e.workloads import build_workloads

    phase = Phase(phase_file)
    records: list[tuple[str, str, int, float, str]] = []  # (workload, phase, status, ms, note)
    lock = threading.Lock()
    deadline = time.monotonic() + duration
    budget = [max_requests]
    shared: dict[str, Any] = {"phase": phase}
    workloads = build_workloads(fixtures, shared)
    weights = [w.weight for w in workloads]
    clients: list[Http] = []

    def worker(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        client = Http(base_url)
        clients.append(client)
        while time.monotonic() < deadline:
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            w = rng.choices(workloads, weights=weights)[0]
            p = phase.value
            t0 = time.perf_counter()
            try:
                status, note = w.step(client, rng)
            except OSError as exc:
                status, note = 0, f"connection error: {exc}"
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                records.append((w.name, p, status, ms, note))

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    phase.stop()
    return {"records": records, "workloads": {w.name: w.summary() for w in workloads},
            "retries": sum(c.retries for c in clients)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--fixtures", required=True, type=Path)
    parser.add_argument("--phase-file", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--max-requests", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    fixtures = json.loads(args.fixtures.read_text())
    result = run(args.base_url, fixtures, duration=args.duration, max_requests=args.max_requests,
                 threads=args.threads, phase_file=args.phase_file, seed=args.seed)
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
