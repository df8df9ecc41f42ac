"""``manage.py hotcache_bench connections`` runs end to end (small), so the headline measurement does not rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_connections_benchmark_measures_each_arm_from_server_status(real_mongo, redis_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_SETTINGS"))}
    env.update(DJANGO_SETTINGS_MODULE="config.settings.demo", DJANGO_DB_PATH=str(tmp_path / "db.sqlite3"))
    run = [sys.executable, "manage.py"]
    subprocess.run([*run, "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=120)
    done = subprocess.run(
        [*run, "hotcache_bench", "connections", "--mongo-url", real_mongo.url, "--redis-url", redis_url,
         "--workers", "2", "--threads", "2", "--requests", "80", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    arms = {a["name"]: a for a in json.loads(done.stdout)}
    before, after = arms["all on MongoDB (Redis unavailable)"], arms["hotcache on Redis (defaults)"]
    assert before["requests"] == after["requests"] == 80
    assert before["fallbacks"] > 0 and after["fallbacks"] == 0
    assert before["peak_connections"] >= 2 and before["opened_connections"] >= before["peak_connections"]
    assert before["mongo_ops_per_request"] > after["mongo_ops_per_request"]
    assert len(before["pool_peaks"]) == 2
    # Redis healthy: each worker's pool stays within MONGO_HEALTHY_POOL_SIZE (1), and each pooled connection
    # is attributed to the call site that opened it.
    assert max(after["pool_peaks"]) <= 1 and after["lane_overflows"] == 0
    assert sum(after["origins"].values()) == sum(after["pool_peaks"])
    assert sum(before["origins"].values()) >= before["peak_connections"] - 2  # all but the 2 monitors
