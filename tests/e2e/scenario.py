"""The fault timeline of the end-to-end run, and the checks made afterwards."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.e2e.cluster import Cluster


def _at(started: float, offset: float) -> None:
    """Wait until ``offset`` seconds into the run: the timeline's schedule, not a synchronisation."""
    delay = started + offset - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def drive(cluster: Cluster, phase_file: Path, started: float, duration: float, result: Any, log: Any) -> None:
    """healthy -> Redis stopped -> recovering -> MongoDB failing -> worker killed mid-sync -> healthy."""
    d = duration
    _at(started, 0.18 * d)
    log("e2e: stopping Redis")
    phase_file.write_text("redis_down")
    cluster.stop_redis()
    _at(started, 0.36 * d)
    cluster.start_redis()
    restarted = time.monotonic()
    phase_file.write_text("recovering")
    log("e2e: Redis restarted")
    back = _wait_back_on_redis(cluster, timeout=cluster.cooldown + 10)
    result.facts["back_on_redis_seconds"] = None if back is None else round(back - restarted, 3)
    _at(started, 0.5 * d)
    phase_file.write_text("healthy")
    _at(started, 0.55 * d)
    log("e2e: MongoDB writes failing")
    phase_file.write_text("mongo_failing")
    cluster.mongo_failing(True)
    _at(started, 0.68 * d)
    cluster.mongo_failing(False)
    phase_file.write_text("healthy")
    _at(started, 0.72 * d)
    phase_file.write_text("worker_killed")
    kill_worker_mid_sync(cluster, result, log)
    _at(started, 0.8 * d)
    phase_file.write_text("healthy")


def _wait_back_on_redis(cluster: Cluster, timeout: float) -> float | None:
    """When hotcache connections reappear on the restarted Redis (the gate probed and closed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(int(c.get("idle", 99)) <= 1 for c in cluster.hotcache_connections()):
                return time.monotonic()
        except Exception:
            pass
        time.sleep(0.05)
    return None


def kill_worker_mid_sync(cluster: Cluster, result: Any, log: Any) -> None:
    """SIGKILL the Celery worker while it runs a sync, then start a fresh one (the message is redelivered)."""
    log("e2e: killing the Celery worker")
    cluster.kill_worker("worker")
    cluster.start_worker("worker2")
    result.facts["worker_killed"] = True


def check(cluster: Cluster, load: dict[str, Any], result: Any, log: Any) -> None:
    from tests.e2e.run import Check

    records = load["records"]
    server_errors = [r for r in records if r[2] >= 500 or r[2] == 0]
    result.checks.append(Check("no 5xx or dropped connection at any time", not server_errors,
                               f"{len(server_errors)} of {len(records)} requests"))
    back = result.facts.get("back_on_redis_seconds")
    result.checks.append(Check(
        "hotcache back on Redis within the gate's cool-down after Redis returns",
        back is not None and back <= cluster.cooldown + 1.0,
        f"{back}s (cool-down {cluster.cooldown}s)",
    ))
    peak = result.facts.get("mongo_peak_connections_per_process", {})
    worst = max(peak.values(), default=0)
    result.checks.append(Check(
        "MongoDB connections per process within maxPoolSize (5) + monitor sockets",
        worst <= 5 + 2, f"peak per process {worst}, peak total {result.facts.get('mongo_peak_connections_total')} "
        f"of the server limit 500"))
