"""Foundation arms: what hotcache's gate and metering add to one Redis round trip."""

from __future__ import annotations

from config.demo.bench.runner import Arm
from hotcache.backends import redis as redis_backend

__all__ = ["arms"]


def arms() -> dict[str, list[Arm]]:
    client = redis_backend.get_client()
    return {
        "foundation: one PING": [
            Arm("redis-py PING (no gate, metered connection)", lambda i: client.ping()),
            Arm("hotcache call(PING): gate + metering", lambda i: redis_backend.call("bench", lambda r: r.ping())),
        ]
    }
