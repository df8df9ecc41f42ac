"""A real Celery worker consumes tasks from the Redis broker (the fixture feature tests build on)."""

from config.celery_app import app


@app.task(name="tests.add")
def add(a, b):
    return a + b


def test_real_worker_runs_a_task_through_the_redis_broker(celery_worker, raw_redis, key_prefix):
    result = add.delay(2, 3)
    assert result.get(timeout=30) == 5
    # The message really went through this run's Redis (broker keys carry the run's prefix).
    assert any(raw_redis.scan_iter(match=f"{key_prefix}:celery:*"))
