"""The end-to-end run: a real deployment under a mixed load, with Redis stopped and restarted, MongoDB
writes failing for a while and a Celery worker killed mid-sync; then the checks, printed as a table.

    python -m tests.e2e.run [--duration 45] [--json out.json] [--cluster]

tests/test_e2e.py runs the same thing in the suite (and so in CI).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.cluster import PY, ROOT, Cluster, wait_until

PHASES = ("healthy", "redis_down", "recovering", "mongo_failing", "worker_killed", "final")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class E2EResult:
    checks: list[Check] = field(default_factory=list)
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> status -> count
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> p50/p99 ms
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def table(self) -> str:
        lines = [
            "| phase | requests | 2xx | 3xx/4xx | 429 | 5xx | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for phase in PHASES:
            st = self.statuses.get(phase)
            if not st:
                continue
            total = sum(st.values())
            ok = sum(n for s, n in st.items() if s.startswith("2"))
            limited = st.get("429", 0)
            server = sum(n for s, n in st.items() if s.startswith("5") or s == "0")
            other = total - ok - limited - server
            lat = self.latency.get(phase, {})
            lines.append(f"| {phase} | {total} | {ok} | {other} | {limited} | {server} | "
                         f"{lat.get('p50', 0):.1f} | {lat.get('p99', 0):.1f} |")
        lines += ["", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {c.name} | {'PASS' if c.ok else 'FAIL'} | {c.detail} |" for c in self.checks]
        return "\n".join(lines)


class ConnectionSampler:
    """Samples established TCP connections to the MongoDB port per process (from `ss`), for the peak figures."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.peak_total = 0
        self.peak_per_pid: dict[int, int] = defaultdict(int)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                out = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{self.port} )"],
                                     capture_output=True, text=True, timeout=5, check=False).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            pids = [int(m) for m in re.findall(r"pid=(\d+)", out)]
            counts = Counter(pids)
            self.peak_total = max(self.peak_total, sum(counts.values()))
            for pid, n in counts.items():
                self.peak_per_pid[pid] = max(self.peak_per_pid[pid], n)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def run_e2e(
    workdir: Path, *, duration: float = 45.0, threads: int = 8, log: Any = print, redis_cluster: bool = False
) -> E2EResult:
    """The run; with ``redis_cluster`` hotcache's Redis is a 6-node Redis Cluster and the Redis fault is a master
    SIGKILLed under load (its replica promoted) instead of the one server stopped."""
    from tests.e2e import scenario

    result = E2EResult()
    with Cluster(workdir, cooldown=2.0, redis_cluster=redis_cluster) as cluster:
        fixtures_path = workdir / "fixtures.json"
        setup = subprocess.run([PY, "-m", "tests.e2e.fixtures", "--out", str(fixtures_path)], cwd=ROOT,
                               env=cluster.env(), capture_output=True, text=True, timeout=120, check=False)
        if setup.returncode != 0:
            msg = f"fixtures failed: {setup.stderr[-3000:]}"
            raise RuntimeError(msg)
        phase_file = workdir / "phase"
        phase_file.write_text("healthy")
        sampler = ConnectionSampler(cluster.mongo_port)
        sampler.start()
        out_path = workdir / "loadgen.json"
        loadgen = subprocess.Popen(
            [PY, "-m", "tests.e2e.loadgen", "--base-url", cluster.base_url, "--fixtures", str(fixtures_path),
             "--phase-file", str(phase_file), "--out", str(out_path), "--duration", str(duration),
             "--threads", str(threads)],
            cwd=ROOT, env=cluster.env(),
        )
        started = time.monotonic()
        try:
            drive = scenario.drive_cluster if redis_cluster else scenario.drive
            drive(cluster, phase_file, started, duration, result, log)
            loadgen.wait(timeout=duration + 120)
        finally:
            if loadgen.poll() is None:
                loadgen.kill()
            sampler.stop()
        if loadgen.returncode != 0:
            msg = f"load generator failed with {loadgen.returncode}"
            raise RuntimeError(msg)
        phase_file.write_text("final")
        load = json.loads(out_path.read_text())
        result.facts["mongo_peak_connections_total"] = sampler.peak_total
        result.facts["mongo_peak_connections_per_process"] = dict(sampler.peak_per_pid)
        _summarise(load, result)
        # Sessions left open become "abandoned" once idle past WORKBENCH_PERSIST_IDLE_AFTER (4 s here).
        time.sleep(5)
        final_path = workdir / "final.json"
        final_run = subprocess.run([PY, "-m", "tests.e2e.final_state", "--out", str(final_path)], cwd=ROOT,
                                   env=cluster.env(), capture_output=True, text=True, timeout=300, check=False)
        if final_run.returncode != 0:
            msg = f"final state failed: {final_run.stderr[-3000:]}"
            raise RuntimeError(msg)
        final = json.loads(final_path.read_text())
        result.facts["final"] = final
        scenario.check(cluster, load, final, result, log)
    return result


def _summarise(load: dict[str, Any], result: E2EResult) -> None:
    by_phase: dict[str, Counter[str]] = defaultdict(Counter)
    lat: dict[str, list[float]] = defaultdict(list)
    for _name, phase, status, ms, _note in load["records"]:
        by_phase[phase][str(status)] += 1
        lat[phase].append(ms)
    result.statuses = {p: dict(c) for p, c in by_phase.items()}
    result.latency = {p: {"p50": _percentile(v, 0.5), "p99": _percentile(v, 0.99), "mean": statistics.fmean(v)}
                      for p, v in lat.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description="hotcache end-to-end run under load and faults")
    parser.add_argument("--duration", type=float, default=45.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cluster", action="store_true", help="hotcache on a 6-node Redis Cluster; kill a master")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hotcache-e2e-") as d:
        result = run_e2e(Path(d), duration=args.duration, threads=args.threads,
                         log=lambda m: print(m, file=sys.stderr), redis_cluster=args.cluster)
    print(result.table())
    if args.json:
        args.json.write_text(json.dumps({"ok": result.ok, "checks": [c.__dict__ for c in result.checks],
                                         "statuses": result.statuses, "latency": result.latency,
                                         "facts": result.facts}, indent=2, default=str))
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()


__all__ = ["Check", "E2EResult", "run_e2e", "wait_until"]
