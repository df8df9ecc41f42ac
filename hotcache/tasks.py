"""hotcache's Celery tasks: one-line @shared_task wrappers around the services (JSON arguments only)."""

from __future__ import annotations

try:
    from celery import shared_task
    from celery.signals import worker_process_shutdown, worker_shutdown
except ImportError as exc:  # Celery is an extra: teams that schedule the syncs with cron do without it
    msg = "hotcache.tasks needs Celery: pip install 'hotcache[celery]' (or run the sync commands from cron)"
    raise ImportError(msg) from exc

__all__ = ["persist_workbench_sessions", "sync_analytics", "sync_apikey_usage"]

# --- API keys ---


@shared_task(name="hotcache.tasks.sync_apikey_usage", ignore_result=False)
def sync_apikey_usage(days: int = 2) -> dict:
    """Copy API keys' daily Redis counters into MongoDB (idempotent; beat runs it every 10 minutes)."""
    import dataclasses

    from hotcache import apikeys

    return dataclasses.asdict(apikeys.sync_usage(days=days))


# --- Workbench ---


@shared_task(name="hotcache.tasks.persist_workbench_sessions", ignore_result=False)
def persist_workbench_sessions() -> dict:
    """Move ended and abandoned workbench sessions into MongoDB history (safe to overlap and to rerun)."""
    from hotcache import workbench

    return workbench.persist().as_dict()

# --- Analytics ---


@shared_task(name="hotcache.tasks.sync_analytics", ignore_result=False)
def sync_analytics(include_current_hour: bool = False) -> dict:
    """Move analytics counters to MongoDB exactly once; safe to run twice or redelivered (claim/apply/release)."""
    from hotcache import analytics

    return analytics.sync(include_current_hour=include_current_hour).as_dict()


def _flush_analytics_batch(**kwargs: object) -> None:
    """A prefork child leaves with os._exit (no atexit): write its analytics batch (ANALYTICS_BATCH_SECONDS) first."""
    from hotcache import analytics

    analytics.flush_batch()


worker_process_shutdown.connect(_flush_analytics_batch, weak=False, dispatch_uid="hotcache.analytics.flush_batch")
worker_shutdown.connect(_flush_analytics_batch, weak=False, dispatch_uid="hotcache.analytics.flush_batch.main")
