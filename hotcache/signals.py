"""Signal receivers, wired explicitly from HotcacheConfig.ready()."""

from __future__ import annotations

__all__ = ["connect_signals"]


def connect_signals() -> None:
    """Connect every receiver hotcache needs. Idempotent (dispatch_uid on each)."""
    # --- Cached users (issue 4) ---
    from hotcache import users

    users.connect()
