"""hotcache's Celery tasks: one-line @shared_task wrappers around the services (JSON arguments only)."""

from __future__ import annotations

from celery import shared_task

# --- Workbench (issue 7) ---

# --- Analytics (issue 8) ---


@shared_task(name="hotcache.tasks.sync_analytics", ignore_result=False)
def sync_analytics(include_current_hour: bool = False) -> dict:
    """Move analytics counters to MongoDB exactly once; safe to run twice or redelivered (claim/apply/release)."""
    from hotcache import analytics

    return analytics.sync(include_current_hour=include_current_hour).as_dict()
