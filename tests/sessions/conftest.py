"""Sessions tests: SESSION_ENGINE is hotcache.sessions on the real Redis (and SQLite in memory)."""

from __future__ import annotations

import pytest

ENGINE = "hotcache.sessions"


@pytest.fixture(autouse=True)
def hotcache_sessions(settings, transactional_db):
    # Real commits: the Redis copy is published on commit (transaction.on_commit), as in production.
    settings.SESSION_ENGINE = ENGINE
