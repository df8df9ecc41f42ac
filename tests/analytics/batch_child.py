"""A process that tracks analytics events with batching on, then exits normally or waits to be killed.

Usage: python -m tests.analytics.batch_child <exit|kill> <interval seconds> <events>
"kill": after the events it waits for any batch write in progress, prints how many events it tracked and how
many are still only in its batch, then blocks until the parent SIGKILLs it.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")

import django

django.setup()

from django.conf import settings  # noqa: E402

from hotcache import analytics  # noqa: E402
from hotcache.analytics._batch import batch  # noqa: E402
from hotcache.conf import hotcache_settings  # noqa: E402


def main() -> None:
    mode, interval, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    settings.HOTCACHE = {**settings.HOTCACHE, "ANALYTICS_BATCH_SECONDS": interval}
    hotcache_settings.reload()
    for i in range(n):
        assert analytics.track("batch_child", path=f"/p{i % 7}", visitor_id=f"v{i}") == "batched"
    if mode == "kill":
        with batch._write_lock:  # no write in flight: what is not in Redis now is exactly what the batch holds
            print(f"tracked={n} unwritten={len(batch)}", flush=True)
            sys.stdin.read()  # blocks until the parent kills this process
    else:
        print(f"tracked={n} unwritten={len(batch)}", flush=True)


if __name__ == "__main__":
    main()
