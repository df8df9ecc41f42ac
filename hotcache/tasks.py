"""hotcache's Celery tasks: one-line @shared_task wrappers around the services (JSON arguments only)."""

from __future__ import annotations

from celery import shared_task

# --- API keys (issue 6) ---


@shared_task(name="hotcache.tasks.sync_apikey_usage", ignore_result=False)
def sync_apikey_usage(days: int = 2) -> dict:
    """Copy API keys' daily Redis counters into MongoDB (idempotent; beat runs it every 10 minutes)."""
    import dataclasses

    from hotcache import apikeys

    return dataclasses.asdict(apikeys.sync_usage(days=days))


# --- Workbench (issue 7) ---

# --- Analytics (issue 8) ---
