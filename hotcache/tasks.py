"""hotcache's Celery tasks: one-line @shared_task wrappers around the services (JSON arguments only).

A run that could not do its work (Redis or MongoDB unavailable) raises SyncIncomplete: Celery retries it
with backoff (RETRY), then marks it FAILURE, so a task's state tells the truth. The service has already
logged the outage once; SyncIncomplete is an expected error (``throws``), so the worker logs its final
failure without a traceback. An analytics sync that finds another sync holding the lock did nothing and
needed to do nothing: SUCCESS with ``locked_out: true``. What a failed run did not move stays queued for
the next run (nothing is lost). See docs/design/exactly-once-jobs.md ("Celery").
"""

from __future__ import annotations

from typing import Any

try:
    from celery import shared_task
    from celery.signals import worker_process_shutdown, worker_shutdown
except ImportError as exc:  # Celery is an extra: teams that schedule the syncs with cron do without it
    msg = "hotcache.tasks needs Celery: pip install 'hotcache[celery]' (or run the sync commands from cron)"
    raise ImportError(msg) from exc

from hotcache.exceptions import SyncIncomplete

__all__ = ["RETRY_POLICY", "persist_workbench_sessions", "sync_analytics", "sync_apikey_usage"]

# Retried after up to 15 s, 30 s and 60 s (Celery's full jitter: a random wait up to each, so workers that
# failed together do not retry together): a Redis restart or a MongoDB election (~10 s) is ridden out, and
# all retries end well before the next scheduled run (every 5 minutes for the persister, the shortest).
RETRY_POLICY: dict[str, Any] = {
    "autoretry_for": (SyncIncomplete,),
    "retry_backoff": 15,
    "retry_backoff_max": 60,
    "max_retries": 3,
    "throws": (SyncIncomplete,),
}


def _outcome(outcome: dict[str, Any], why_stopped: str) -> dict[str, Any]:
    """The task's return value, or SyncIncomplete when the run stopped early."""
    if why_stopped:
        raise SyncIncomplete(why_stopped, outcome)
    return outcome


# --- API keys ---


@shared_task(name="hotcache.tasks.sync_apikey_usage", ignore_result=False, **RETRY_POLICY)
def sync_apikey_usage(days: int = 2) -> dict[str, Any]:
    """Copy API keys' daily Redis counters into MongoDB (idempotent; beat runs it every 10 minutes)."""
    import dataclasses

    from hotcache import apikeys

    result = apikeys.sync_usage(days=days)
    return _outcome(dataclasses.asdict(result), result.why_stopped())


# --- Workbench ---


@shared_task(name="hotcache.tasks.persist_workbench_sessions", ignore_result=False, **RETRY_POLICY)
def persist_workbench_sessions() -> dict[str, Any]:
    """Move ended and abandoned workbench sessions into MongoDB history (safe to overlap and to rerun)."""
    from hotcache import workbench

    result = workbench.persist()
    return _outcome(result.as_dict(), result.why_stopped())


# --- Analytics ---


@shared_task(name="hotcache.tasks.sync_analytics", ignore_result=False, **RETRY_POLICY)
def sync_analytics(include_current_hour: bool = False) -> dict[str, Any]:
    """Move analytics counters to MongoDB exactly once; safe to run twice or redelivered (claim/apply/release)."""
    from hotcache import analytics

    result = analytics.sync(include_current_hour=include_current_hour)
    return _outcome(result.as_dict(), result.why_stopped())


def _flush_analytics_batch(**kwargs: object) -> None:
    """A prefork child leaves with os._exit (no atexit): write its analytics batch (ANALYTICS_BATCH_SECONDS) first."""
    from hotcache import analytics

    analytics.flush_batch()


worker_process_shutdown.connect(_flush_analytics_batch, weak=False, dispatch_uid="hotcache.analytics.flush_batch")
worker_shutdown.connect(_flush_analytics_batch, weak=False, dispatch_uid="hotcache.analytics.flush_batch.main")


def _flush_workbench_durable(**kwargs: object) -> None:
    """A prefork child leaves with os._exit (no atexit): write its pending workbench durable copies first."""
    from hotcache import workbench

    workbench.flush_durable()


worker_process_shutdown.connect(_flush_workbench_durable, weak=False, dispatch_uid="hotcache.workbench.flush_durable")
worker_shutdown.connect(_flush_workbench_durable, weak=False, dispatch_uid="hotcache.workbench.flush_durable.main")
