"""hotcache: move a Django product's high-frequency work off its primary database onto Redis.

Redis is the hot store, MongoDB (through pymongo) the durable store and the fallback; every feature
keeps working when Redis is down and goes back to Redis by itself when it returns.
"""

from __future__ import annotations

from hotcache.conf import hotcache_settings
from hotcache.exceptions import (
    BackendUnavailable,
    DuplicateKey,
    HotcacheError,
    InvalidName,
    MongoUnavailable,
    MongoWriteError,
    RedisUnavailable,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "DuplicateKey",
    "HotcacheError",
    "InvalidName",
    "MongoUnavailable",
    "MongoWriteError",
    "RedisUnavailable",
    "__version__",
    "hotcache_settings",
]
