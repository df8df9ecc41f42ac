"""What this process keeps between requests, for one HOTCACHE dict: the settings snapshot, the deny cache, the
outage state (local limiter, degraded flag) and the once-per-process warnings.

One object per HOTCACHE dict (``hotcache_settings.derived``), so new settings start it afresh and the request
path reaches all of it with one identity check. Caches only: losing it never admits a request Redis refuses.
See docs/ratelimit.md.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from hotcache.conf import hotcache_settings
from hotcache.ratelimit.denycache import DenyCache
from hotcache.ratelimit.options import Snapshot, settings_snapshot
from hotcache.ratelimit.outage import Outage

__all__ = ["LocalState", "Once", "local_state", "reset_local_state"]


class Once:
    """A warning logged once per process (``reset_local_state`` logs it again)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done = False

    def first(self) -> bool:
        """True for the first caller only."""
        if self.done:
            return False
        with self._lock:
            first, self.done = not self.done, True
        return first


@dataclass(frozen=True, slots=True)
class LocalState:
    settings: Snapshot
    deny_cache: DenyCache
    outage: Outage
    no_address_warning: Once = field(default_factory=Once)

    @classmethod
    def build(cls) -> LocalState:
        snapshot = settings_snapshot()
        size = snapshot.deny_cache_size
        # The local limiter is bounded like the deny cache, but never off (0 or less: 10000 entries).
        return cls(snapshot, DenyCache(size), Outage(size if size > 0 else 10_000))


def local_state() -> LocalState:
    """This process's rate-limit state for the current settings (one identity check when HOTCACHE is unchanged)."""
    return hotcache_settings.derived("ratelimit.state", LocalState.build)


def reset_local_state() -> None:
    """Forget the deny cache, the local limiter, the degraded flag and the once-per-process warnings
    (tests; ``ratelimit_check``). New settings start them afresh anyway."""
    state = local_state()
    state.deny_cache.clear()
    state.outage.clear()
    state.no_address_warning.done = False
