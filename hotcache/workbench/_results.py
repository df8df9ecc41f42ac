"""What the workbench API returns and raises: Session, HistoryEntry, SessionCounts, PersistResult, Conflict,
OwnerConflict and InvalidInput. See docs/workbench.md#api.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from hotcache.exceptions import (
    HotcacheError,
    InvalidName,
)


class InvalidInput(InvalidName):
    """An argument hotcache refuses before touching any store (so a ValueError, and an InvalidName).

    ``field`` names the argument: "session_id", "owner", "expected_owner", "expected_version", "state" or
    "limit"; the message says why. HTTP glue answers 400 naming that field.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class OwnerConflict(HotcacheError, ValueError):
    """save() would change who owns the session; nothing was written.

    Pass ``expected_owner=<its current owner>`` to transfer it on purpose, or save under a new session id.
    ``current_owner`` holds the owner found (kept out of the message, which may reach an HTTP client).
    """

    def __init__(self, session_id: str, owner: str | None, current_owner: str | None, *, expected: bool) -> None:
        if expected:
            msg = f"workbench session {session_id!r} is not owned by expected_owner; nothing was written"
        else:
            msg = (
                f"workbench session {session_id!r} belongs to another owner: pass expected_owner=<its current "
                "owner> to transfer it, or use a new session id"
            )
        super().__init__(msg)
        self.session_id = session_id
        self.owner = owner
        self.current_owner = current_owner


class Conflict(HotcacheError):
    """save(expected_version=N) found another version: someone saved in between. Load, merge, retry."""

    def __init__(self, session_id: str, expected: int, current: int) -> None:
        super().__init__(f"workbench session {session_id!r} is at version {current}, not {expected}")
        self.session_id = session_id
        self.expected = expected
        self.current = current


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    state: dict[str, Any]
    version: int
    owner: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class HistoryEntry(Session):
    """A session as it was persisted to MongoDB history."""

    closed_at: dt.datetime  # when it ended; for an abandoned session, its last update (last seen on the fallback)
    reason: str  # "ended" | "idle"


@dataclass(slots=True)
class PersistResult:
    ended: int = 0  # ended sessions written to history by this run
    idle: int = 0  # abandoned sessions written to history
    already: int = 0  # already in history (a replay or another worker): not written again
    kept: int = 0  # touched after the claim: written, but left hot
    missing: int = 0  # claimed but gone from Redis (expired before any persister ran)
    tampered: int = 0  # claimed but not trusted (failed verification, or not a member hotcache queued): dropped
    recovered: int = 0  # stale claims of an earlier run taken over
    from_fallback: int = 0  # sessions swept from workbench_active
    reconciled: int = 0  # outage copies compared with Redis after an outage (see "recovery")
    batches: int = 0  # MongoDB bulk writes
    dry_run: bool = False
    pending: dict[str, int] = field(default_factory=dict)  # dry run: what would be moved
    errors: list[str] = field(default_factory=list)

    @property
    def persisted(self) -> int:
        return self.ended + self.idle + self.from_fallback

    def as_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.__slots__}
        out["persisted"] = self.persisted
        return out

    def why_stopped(self) -> str:
        """What kept the run from finishing ("" when it finished): for the command and the task."""
        if not self.errors:
            return ""
        return "persist_workbench incomplete (the rest stays queued): " + "; ".join(self.errors)


@dataclass(frozen=True, slots=True)
class SessionCounts:
    active: int  # sessions in the Redis index (hot, or idle and waiting for the persister)
    idle: int  # of those, unused longer than WORKBENCH_PERSIST_IDLE_AFTER
    ended: int  # ended sessions queued for history
    claimed: int  # taken by a persister run that has not acknowledged yet
