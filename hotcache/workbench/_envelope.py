"""Signed session records: the sealed envelope in Redis (version, owner, incarnation token, times, SHA-256 of
the state), opening and checking it, counting a record that fails, and the envelope this process saw last
per session (a save based on it is one round trip). See docs/workbench.md#signed-records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hotcache import recovery, signing
from hotcache.backends import redis as redis_backend
from hotcache.workbench._layout import FEATURE, _data_key, _identity
from hotcache.workbench._results import Session
from hotcache.workbench._state import _MAX_VERSION

_HINTS = 4096  # sessions whose current envelope a process remembers (a save of one of them is one round trip)

# Record kinds signed with hotcache.signing. The identity is the key a record was written under: a session's
# data key for its envelope (end() renames it along, the persister checks it as such), the ended key for the
# end time, the fence key for the fence. So no record verifies under another session or kind.
_SESSION_RECORD = "workbench.session"
_ENDED_RECORD = "workbench.ended"
_FENCE_RECORD = "workbench.fence"
_ENVELOPE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "v": int,
    "g": str,
    "o": (str, type(None)),
    "c": (int, float),
    "u": (int, float),
    "h": str,
}
# What the scripts report for no session, and for a key hotcache did not write (not a hash, or no envelope).
_NONE, _FOREIGN = b"", b"!"


@dataclass(frozen=True, slots=True)
class _Envelope:
    """A session's authenticated envelope in Redis (hash field ``m``): everything but the state, whose SHA-256
    it carries. Scripts compare ``raw`` as an opaque string; only Python opens it."""

    version: int
    token: str
    owner: str | None
    created: float
    updated: float
    digest: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class _Hot:
    """A session as Redis holds it, verified."""

    envelope: _Envelope
    text: str

    def session(self, session_id: str) -> Session:
        e = self.envelope
        return Session(
            session_id=session_id,
            state=json.loads(self.text),
            version=e.version,
            owner=e.owner,
            created_at=_ts(e.created),
            updated_at=_ts(e.updated),
        )


def _digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def _seal_envelope(
    session_id: str, *, version: int, token: str, owner: str | None, created: float, updated: float, digest: str
) -> _Envelope:
    body = {"v": version, "g": token, "o": owner, "c": created, "u": updated, "h": digest}
    raw = signing.seal_json(_SESSION_RECORD, _identity(session_id), body).encode("utf-8")
    return _Envelope(version, token, owner, created, updated, digest, raw)


def _open_envelope(session_id: str, raw: Any) -> _Envelope | None:
    """The envelope ``raw`` if hotcache sealed it for this session's key, else None (never raises)."""
    if not raw or raw == _FOREIGN:
        return None
    value = signing.unseal_json(_SESSION_RECORD, _identity(session_id), raw, required=_ENVELOPE_FIELDS)
    if value is None or not 1 <= value["v"] <= _MAX_VERSION:
        return None
    raw = raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
    return _Envelope(value["v"], value["g"], value["o"], float(value["c"]), float(value["u"]), value["h"], raw)


def _open_hot(session_id: str, state: Any, observed: Any) -> _Hot | None:
    """The session if its envelope is ours and its state is the one the envelope names, else None."""
    envelope = _open_envelope(session_id, observed)
    if envelope is None or not isinstance(state, bytes | str):
        return None
    data = state.encode("utf-8", "surrogatepass") if isinstance(state, str) else state
    if _digest(data) != envelope.digest:
        return None
    return _Hot(envelope, data.decode("utf-8"))  # the bytes hotcache wrote: UTF-8 by construction


def _envelope_from_doc(session_id: str, doc: Mapping[str, Any]) -> _Envelope:
    return _seal_envelope(
        session_id,
        version=int(doc["version"]),
        token=doc["token"],
        owner=doc.get("owner"),
        created=_ts(doc["created_at"]).timestamp(),
        updated=_ts(doc["updated_at"]).timestamp(),
        digest=_digest(doc["state"]),
    )


def _tampered(session_id: str, observed: Any, why: str | None = None) -> None:
    """Count a session record that failed verification (it is absent from now on) and forget its envelope."""
    _remember(session_id, None)
    if why is None:
        why = "is not a session record hotcache wrote" if observed in (_NONE, _FOREIGN) else "failed verification"
    signing.tampered(FEATURE, _data_key(session_id), why)


def _observed(reply: Any, exists: Any = 0) -> bytes:
    """An envelope as a script returned it, or as a pipeline read it (HGET m, and EXISTS for a miss): bytes,
    b'' for no session, b'!' for a key hotcache did not write (another type, or a hash without an envelope)."""
    if isinstance(reply, Exception):
        return _FOREIGN
    if reply is None or reply is False:
        return _FOREIGN if exists and not isinstance(exists, Exception) else _NONE
    return reply if isinstance(reply, bytes) else str(reply).encode("utf-8", "surrogatepass")


def _read_envelopes(session_ids: list[str]) -> list[bytes]:
    """The envelopes Redis holds for these sessions, as stored (one pipeline; ``_observed`` values)."""

    def run(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for session_id in session_ids:
            pipe.hget(_data_key(session_id), "m")
            pipe.exists(_data_key(session_id))
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies

    replies = redis_backend.call(FEATURE, run)
    return [_observed(m, exists) for m, exists in zip(replies[0::2], replies[1::2], strict=True)]


# The current envelope this process saw last, per session key: a save based on it is one round trip. A stale
# entry costs one more round trip (the script hands the current envelope back); it never decides a refusal.
_hints: recovery.Recent[str, _Envelope] = recovery.Recent(_HINTS)


def _remember(session_id: str, envelope: _Envelope | None) -> None:
    if envelope is None:
        _hints.pop(_data_key(session_id))
    else:
        _hints.put(_data_key(session_id), envelope)


def _recall(session_id: str) -> _Envelope | None:
    return _hints.get(_data_key(session_id))


def _ts(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, bytes):
        value = value.decode()
    return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _token() -> str:
    return secrets.token_hex(6)
