"""Sessions without the database on the hot path: ``SESSION_ENGINE = "hotcache.sessions"``.

Django's database sessions, read from Redis through hotcache's Redis path (health gate, short timeouts,
metering as ``sessions``) and written through to the database first, as Django's ``cached_db`` engine does:
a Redis outage loses no session and logs nobody out. With hotcache's CachedAuthenticationMiddleware a warm
authenticated request makes no database query. Modules: ``entries`` (session-key boundary, keys, the sealed
entry), ``cache`` (the versioned Redis copy), ``store`` (the SessionStore). See docs/sessions.md.
"""

from __future__ import annotations

from hotcache.sessions.store import SessionStore

__all__ = ["SessionStore"]
