"""The RATELIMIT_* settings the per-request path reads, taken once per HOTCACHE dict (``hotcache_settings.derived``).

``hotcache_settings`` reads django settings on every access (right for override_settings, but about a
microsecond each); the request path reads this snapshot instead. See docs/ratelimit.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from hotcache import keys
from hotcache.conf import hotcache_settings

__all__ = ["Snapshot", "settings_snapshot"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """This process's view of the rate-limit settings of one HOTCACHE dict (invalid values: their defaults)."""

    key_prefix: str
    deny_cache_size: int
    legacy_headers: bool
    status_code: int

    @classmethod
    def build(cls) -> Snapshot:
        size = hotcache_settings.RATELIMIT_DENY_CACHE_SIZE
        status = hotcache_settings.RATELIMIT_STATUS_CODE
        return cls(
            key_prefix=keys.prefix(),
            deny_cache_size=size if isinstance(size, int) and not isinstance(size, bool) else 10_000,
            legacy_headers=bool(hotcache_settings.RATELIMIT_LEGACY_HEADERS),
            status_code=status if isinstance(status, int) and 400 <= status <= 599 else 429,
        )


def settings_snapshot() -> Snapshot:
    """This request's view of the rate-limit settings (one identity check when HOTCACHE is unchanged)."""
    return hotcache_settings.derived("ratelimit.settings", Snapshot.build)
