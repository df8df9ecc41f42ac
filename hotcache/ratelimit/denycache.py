"""The deny cache: denials this process has seen, so a client known to be refused until T is refused locally
until T with zero Redis calls. It stores denials only, so it can never wrongly admit a request.

The process's cache lives in ``state.local_state()``. See docs/ratelimit.md.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from hotcache.ratelimit.limits import Limit

__all__ = ["DenyCache"]


class DenyCache:
    """Known denials until their reset time (monotonic clock). Bounded LRU (``size`` entries, 0: off), O(1) eviction."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[float, int, int]] = OrderedDict()

    def get(self, limit: Limit, now: float) -> float | None:
        """Seconds this limit is still known to refuse ``limit.cost``, or None."""
        if limit.identity not in self._items:
            # Most lookups miss: answered without the lock, as __bool__ is (a denial stored at this instant may
            # be missed and Redis then decides; the cache only ever refuses, so a miss never wrongly admits).
            return None
        with self._lock:
            item = self._items.get(limit.identity)
            if item is None:
                return None
            until, cost, lim = item
            if now >= until:
                del self._items[limit.identity]
                return None
            if limit.cost < cost or limit.limit != lim:
                return None
            self._items.move_to_end(limit.identity)
            return until - now

    def put(self, limit: Limit, until: float) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._items[limit.identity] = (until, limit.cost, limit.limit)
            self._items.move_to_end(limit.identity)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        # Read without the lock: a denial stored concurrently may be missed, and the request then asks
        # Redis, which decides anyway. The cache only ever refuses, so a miss can never wrongly admit.
        return bool(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

