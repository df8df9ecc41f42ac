"""hotcache's Celery tasks: one-line @shared_task wrappers around the services (JSON arguments only)."""

from __future__ import annotations

from celery import shared_task  # noqa: F401 - used by the feature tasks below

# --- Workbench (issue 7) ---

# --- Analytics (issue 8) ---
