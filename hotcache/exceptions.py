"""hotcache's errors, one root. Expected outcomes (a denied request, a wrong code) are results, not raises.

    HotcacheError
    ├── BackendUnavailable            a store did not answer; callers fall back or fail as their policy says
    │   ├── RedisUnavailable          error, timeout, or the health gate is open
    │   └── MongoUnavailable          network error, server selection or pool wait timeout
    ├── MongoWriteError               MongoDB refused a write for a reason other than a duplicate key
    │   └── DuplicateKey              E11000: the document already exists (idempotent replays expect it)
    ├── SyncIncomplete                a periodic job's Celery task could not finish (an outage): retried, then failed
    └── InvalidName (also ValueError) a user-supplied name or id that hotcache will not turn into a key
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendUnavailable",
    "DuplicateKey",
    "HotcacheError",
    "InvalidName",
    "MongoUnavailable",
    "MongoWriteError",
    "RedisUnavailable",
    "SyncIncomplete",
]


class HotcacheError(Exception):
    """Root of every error hotcache raises."""


class BackendUnavailable(HotcacheError):
    """A backing store did not answer in time; the caller decides how to degrade."""

    backend = "backend"

    def __init__(
        self, message: str = "", *, gate_open: bool = False, maybe_applied: bool = False, answered: bool = False
    ) -> None:
        super().__init__(message or f"{self.backend} is unavailable")
        self.gate_open = gate_open
        # True when the request reached the store and only the reply was lost: it may have been applied.
        self.maybe_applied = maybe_applied
        # True when the store answered with a refusal (a full or read-only Redis, a quota, this call's own
        # error): it is reachable, and still serves reads to other processes.
        self.answered = answered


class RedisUnavailable(BackendUnavailable):
    backend = "redis"


class MongoUnavailable(BackendUnavailable):
    backend = "mongodb"


class MongoWriteError(HotcacheError):
    """MongoDB rejected a write (not a connectivity problem: retrying will not help)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class DuplicateKey(MongoWriteError):
    """A unique index already holds this key (MongoDB error 11000)."""


class InvalidName(HotcacheError, ValueError):
    """A user-supplied name, id or purpose that fails validation; the message says which and why."""


class SyncIncomplete(HotcacheError):
    """A periodic job (analytics sync, usage sync, workbench persister) stopped before finishing its work.

    Raised by hotcache's Celery tasks so the task's state says so (RETRY, then FAILURE) instead of SUCCESS.
    The services return the same outcome as a result (``error`` / ``errors``); the management commands exit
    non-zero. ``outcome`` holds the run's figures as a dict. What the run did not move stays queued: rerun.
    """

    def __init__(self, message: str, outcome: dict[str, Any] | None = None) -> None:
        super().__init__(message, outcome)  # both in args: Celery's result backend rebuilds it from them
        self.message = message
        self.outcome = outcome or {}

    def __str__(self) -> str:
        return self.message
