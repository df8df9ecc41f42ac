"""Workbench sessions: hot JSON state in Redis with optimistic versions and owners; every ended or abandoned
session reaches MongoDB history (``workbench_history``) exactly once.

save(), load() and end() are one Redis round trip each in the common case; persist() moves sessions into
history. Redis down: the same calls work on MongoDB (``workbench_active``). API, costs, layout, recovery
rules, failure table and benchmarks: docs/workbench.md.
"""

from __future__ import annotations

from hotcache.workbench._archive import history
from hotcache.workbench._durable import flush_durable
from hotcache.workbench._hot import counts, end, load, save
from hotcache.workbench._layout import ACTIVE as ACTIVE
from hotcache.workbench._layout import FEATURE as FEATURE
from hotcache.workbench._layout import HISTORY as HISTORY
from hotcache.workbench._persist import persist
from hotcache.workbench._results import (
    Conflict,
    HistoryEntry,
    InvalidInput,
    OwnerConflict,
    PersistResult,
    Session,
    SessionCounts,
)

__all__ = [
    "Conflict",
    "HistoryEntry",
    "InvalidInput",
    "OwnerConflict",
    "PersistResult",
    "Session",
    "SessionCounts",
    "counts",
    "end",
    "flush_durable",
    "history",
    "load",
    "persist",
    "save",
]
