"""Loaded by the Celery worker in end-to-end runs only (CELERY_IMPORTS in config/settings/e2e.py).

When the harness creates <workdir>/kill-mid-sync, the next analytics sync that reaches the point after
its MongoDB write and before releasing the batch in Redis (the step where a crash is most dangerous)
announces it in <workdir>/sync-holding and waits there until the harness SIGKILLs this worker.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from hotcache.analytics import _sync

_workdir = Path(os.environ["HOTCACHE_E2E_WORKDIR"])
_original = _sync.checkpoint


def _checkpoint(step: str) -> None:
    _original(step)
    if step == "before_release" and (_workdir / "kill-mid-sync").exists():
        (_workdir / "sync-holding").write_text(str(os.getpid()))
        while (_workdir / "kill-mid-sync").exists():  # held here until the harness kills the process
            time.sleep(0.05)


_sync.checkpoint = _checkpoint
