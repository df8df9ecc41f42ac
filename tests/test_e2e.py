"""End to end under load and faults: gunicorn (2 workers), a Celery worker and beat, the harness's own Redis
(stopped and restarted mid-run) and MongoDB wire server (writes failing for a while), a worker SIGKILLed
in the middle of a sync. Every check the issue lists must pass; the table is printed for the log."""

import pytest

from tests.e2e.run import run_e2e


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_load_with_redis_killed_mongo_failing_and_a_worker_killed(tmp_path, capsys):
    result = run_e2e(tmp_path, duration=40.0, threads=8, log=lambda m: None)
    with capsys.disabled():
        print("\n" + result.table())
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok]
    assert not failed, "\n".join(failed)
    assert set(result.statuses) >= {"healthy", "redis_down", "recovering", "mongo_failing", "worker_killed"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_load_on_a_redis_cluster_with_a_master_killed(tmp_path, capsys):
    """hotcache on a real 6-node Redis Cluster; a master SIGKILLed under load, its replica promoted (then MongoDB
    failing and a worker killed mid-sync, as above): the same final checks, and the time to full recovery."""
    result = run_e2e(tmp_path, duration=40.0, threads=8, log=lambda m: None, redis_cluster=True)
    with capsys.disabled():
        print("\n" + result.table())
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok]
    assert not failed, "\n".join(failed)
    assert set(result.statuses) >= {"healthy", "redis_down", "recovering", "mongo_failing", "worker_killed"}
    assert result.facts["failover_seconds"] > 0 and result.facts["full_recovery_seconds"] is not None
