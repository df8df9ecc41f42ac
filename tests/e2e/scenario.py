"""The fault timeline of the end-to-end run, and the checks made afterwards."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from tests.e2e.cluster import PY, ROOT, Cluster, wait_until


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
    _after_redis(cluster, phase_file, started, d, result, log)


def drive_cluster(cluster: Cluster, phase_file: Path, started: float, duration: float, result: Any, log: Any) -> None:
    """hotcache on a Redis Cluster: healthy -> a master SIGKILLed (its replica promoted) -> recovering ->
    MongoDB failing -> worker killed mid-sync -> healthy. The killed node is started again once its replica
    has taken over (it rejoins as a replica), as an operator would."""
    d = duration
    _at(started, 0.18 * d)
    log("e2e: SIGKILL a Redis Cluster master")
    phase_file.write_text("redis_down")
    killed_at = time.monotonic()
    master, replicas = cluster.kill_master(slot=0)
    assert cluster.redis_nodes is not None
    promoted = cluster.redis_nodes.wait_for_promotion(master, replicas)
    promoted_at = time.monotonic()
    phase_file.write_text("recovering")
    log(f"e2e: replica {promoted.address} promoted")
    result.facts["killed_master"] = master.address
    result.facts["failover_seconds"] = round(promoted_at - killed_at, 3)
    back = _wait_back_on_redis(cluster, timeout=cluster.cooldown + 10, node=promoted)
    result.facts["back_on_redis_seconds"] = None if back is None else round(back - promoted_at, 3)
    result.facts["full_recovery_seconds"] = None if back is None else round(back - killed_at, 3)
    cluster.redis_nodes.restart(master)
    _after_redis(cluster, phase_file, started, d, result, log)


def _after_redis(cluster: Cluster, phase_file: Path, started: float, d: float, result: Any, log: Any) -> None:
    """The second half of either timeline: healthy -> MongoDB failing -> worker killed mid-sync -> healthy."""
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


def _wait_back_on_redis(cluster: Cluster, timeout: float, node: Any = None) -> float | None:
    """When hotcache connections are busy again on the restarted Redis (or the promoted cluster node): the
    gate probed and closed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(int(c.get("idle", 99)) <= 1 for c in cluster.hotcache_connections(node)):
                return time.monotonic()
        except Exception:
            pass
        time.sleep(0.05)
    return None


def kill_worker_mid_sync(cluster: Cluster, result: Any, log: Any) -> None:
    """SIGKILL the Celery worker while an analytics sync holds a claimed batch already written to MongoDB
    but not yet released in Redis; start a fresh worker, which gets the redelivered task (acks_late)."""
    cue = cluster.workdir / "kill-mid-sync"
    holding = cluster.workdir / "sync-holding"
    cue.touch()
    sent = subprocess.run(
        [PY, "-m", "celery", "-A", "config", "call", "hotcache.tasks.sync_analytics",
         "--kwargs", '{"include_current_hour": true}'],
        cwd=ROOT, env=cluster.env(), capture_output=True, text=True, timeout=60, check=False,
    )
    if sent.returncode != 0:
        msg = f"could not send the sync task: {sent.stderr[-1000:]}"
        raise RuntimeError(msg)
    # A sync reaches its release step only with counters to apply. Late in a loaded run the traffic may have
    # ended and the beat's syncs drained every counter, so the harness tracks an event of its own (not e2e_*,
    # outside the checked totals) every few seconds until a sync, the one sent above or a beat's, holds.
    deadline = time.monotonic() + 60
    cues: list[int] = []
    while True:
        cues.append(cluster.track_event("harness_cue"))
        try:
            wait_until(holding.exists, min(5.0, max(0.0, deadline - time.monotonic())), "")
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                log_tail = (cluster.workdir / "worker.log").read_text(errors="replace")[-3000:]
                msg = (f"timed out after 60s waiting for the worker to reach the sync's release step (harness beacons:"
                       f" {cues}); the worker's log ends:\n{log_tail}")
                raise TimeoutError(msg) from None
    log("e2e: worker holds a written, unreleased batch; killing it")
    cluster.kill_worker("worker")
    cue.unlink()
    cluster.start_worker("worker2")
    result.facts["worker_killed_at"] = "after the MongoDB write, before the Redis release"
    result.facts["harness_cue_events"] = cues  # HTTP statuses of the harness's own beacons (204: accepted)


def check(cluster: Cluster, load: dict[str, Any], final: dict[str, Any], result: Any, log: Any) -> None:
    from tests.e2e.run import Check

    records = load["records"]
    w = load["workloads"]
    add = result.checks.append

    server_errors = [r for r in records if r[2] >= 500 or r[2] == 0]
    add(Check("no 5xx or dropped connection at any time", not server_errors,
              f"{len(server_errors)} of {len(records)} requests"
              + (f"; first: {server_errors[0]}" if server_errors else "")))

    limited = [r for r in records if r[2] == 429]
    unexpected = [r for r in limited if r[0] not in ("ratelimit", "apikeys")
                  or (r[0] == "ratelimit" and r[4] != "greedy")]
    polite = w["ratelimit"]["polite"]
    add(Check("429s only for clients over their limits", not unexpected and limited != [],
              f"{len(limited)} 429s: greedy {w['ratelimit']['greedy'].get('429', 0)}, "
              f"polite {polite.get('429', 0)} (of {sum(polite.values())}), over-limit API keys "
              f"{sum(w['apikeys']['limited'].values())}; unexpected {len(unexpected)}"))

    sent = w["analytics"]["accepted"]
    stored = {e: n for e, n in final["analytics"]["totals"].items() if e.startswith("e2e_")}
    diff = {e: stored.get(e, 0) - n for e, n in sent.items() if stored.get(e, 0) != n}
    add(Check("analytics totals in MongoDB equal the events accepted (2xx)", stored == sent,
              f"accepted {sum(sent.values())}, in MongoDB {sum(stored.values())} {diff or ''}"
              f"(client re-sends after connection errors: {load.get('retries', 0)}; "
              f"unsynced left {final['analytics']['unsynced']}, {final['analytics']['sync_runs']} final sync runs)"))

    allowed = w["apikeys"]["allowed"]
    usage = final["apikeys"]["usage_today"]
    mismatched = {k: (n, usage.get(k)) for k, n in allowed.items() if usage.get(k) != n}
    add(Check("API key usage totals equal the allowed calls", not mismatched,
              f"{sum(allowed.values())} allowed calls; mismatches {mismatched or 'none'}"))
    overruns = []
    for key in load_fixtures(cluster)["api_keys"]:
        if key["limit"] is None:
            continue
        over = allowed.get(key["key_id"], 0) - key["limit"]
        tolerance = w["apikeys"]["allowed_in_outage"].get(key["key_id"], 0)
        overruns.append(f"{key['name']}: {allowed.get(key['key_id'], 0)}/{key['limit']}")
        if over > tolerance:
            by_phase = w["apikeys"].get("allowed_by_phase", {}).get(key["key_id"], {})
            overruns.append(f"EXCEEDED beyond the outage tolerance (allowed per phase: {by_phase})")
    add(Check("no API key past its daily limit beyond the outage tolerance",
              not any("EXCEEDED" in o for o in overruns), "; ".join(overruns)))

    wb = w["workbench"]
    history = final["workbench"]["history"]
    closed = set(wb["ended"]) | set(wb["abandoned"])
    missing = sorted(closed - set(history))
    doubled = sorted(s for s, n in history.items() if n > 1)
    add(Check("every ended or abandoned workbench session in history exactly once", not missing and not doubled,
              f"{len(wb['ended'])} ended + {len(set(wb['abandoned']))} abandoned; missing {len(missing)}, "
              f"twice {len(doubled)}" + (f" (e.g. {missing[:3]})" if missing else "")))

    add(Check("no MFA code verified twice", w["mfa"]["verified_twice"] == 0 and w["mfa"]["verified"] > 0,
              f"{w['mfa']['issued']} issued, {w['mfa']['verified']} verified, "
              f"{w['mfa']['verified_twice']} verified twice"))
    add(Check("every authenticated request saw its own user", w["users"]["wrong_user"] == 0,
              f"{w['users']['wrong_user']} wrong"))

    back = result.facts.get("back_on_redis_seconds")
    returned = "its replica is promoted" if cluster.redis_cluster else "Redis returns"
    detail = f"{back}s (cool-down {cluster.cooldown}s)"
    if cluster.redis_cluster:
        facts = result.facts
        detail += (f"; failover {facts.get('failover_seconds')}s, full recovery "
                   f"{facts.get('full_recovery_seconds')}s after the SIGKILL of {facts.get('killed_master')}")
    add(Check(f"hotcache back on Redis within the gate's cool-down after {returned}",
              back is not None and back <= cluster.cooldown + 1.0, detail))
    healthy, down = result.latency.get("healthy", {}), result.latency.get("redis_down", {})
    added = down.get("p50", 0) - healthy.get("p50", 0)
    add(Check("added p50 latency during the Redis outage bounded by the Redis timeout (100 ms)",
              added <= 100.0,
              f"healthy p50 {healthy.get('p50', 0):.1f} ms, Redis down p50 {down.get('p50', 0):.1f} ms"))
    peak = result.facts.get("mongo_peak_connections_per_process", {})
    worst = max(peak.values(), default=0)
    add(Check("MongoDB connections per process within maxPoolSize (5) + 2 monitor sockets", worst <= 7,
              f"peak per process {worst}, peak total {result.facts.get('mongo_peak_connections_total')} "
              "of the server limit 500"))


def load_fixtures(cluster: Cluster) -> dict[str, Any]:
    import json

    return json.loads((cluster.workdir / "fixtures.json").read_text())
