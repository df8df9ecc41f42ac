"""Access to the outside systems: Redis (hot), MongoDB (durable, fallback), and the health gate."""

from __future__ import annotations

__all__ = ["reset_all"]


def reset_all() -> None:
    """Forget every client and the gate state (settings changed; test isolation)."""
    from hotcache.backends import aredis, mongo, redis

    redis.reset()
    aredis.reset()
    mongo.reset()
