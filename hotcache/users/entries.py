"""What Redis holds for one user: the user-id boundary, the keys, and the sealed entry (see docs/users.md).

An entry is a ``hotcache.signing`` record (purpose ``users.entry``, bound to the user id) of JSON: the
loader's cached fields, the session auth hash, the model label, the format and an expiry. An entry this
process cannot trust is a miss, counted as ``users:tampered``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from django.core.exceptions import ValidationError
from django.db import models

from hotcache import clock, keys, signing
from hotcache.exceptions import InvalidName

__all__ = ["FEATURE", "SKEW_MS", "Cached", "Codec", "UserId", "decode", "encode", "entry_key", "user_id", "version_key"]

FEATURE = "users"
# Bump when the entry layout changes; entries of another format are then distrusted and refilled.
# 2: sealed with hotcache.signing and carrying an expiry (1: the module's own HMAC, no expiry).
_FORMAT = 2
_ENTRY = "users.entry"  # hotcache.signing purpose of an entry; its identity is the user id's key part
SKEW_MS = 60_000  # an entry is trusted this long past its expiry: app clocks may disagree by that much
_MAX_ID_LENGTH = 255  # characters of a user id given as text


class Codec(Protocol):
    """What an entry needs of a loader (hotcache.users.UserLoader is one)."""

    @property
    def model(self) -> type[models.Model]: ...

    def dump(self, user: Any) -> dict[str, Any]: ...

    def rebuild(self, fields: dict[str, Any]) -> Any: ...


@dataclass(frozen=True, slots=True)
class UserId:
    value: Any  # the primary key as the user model's pk field gives it (what the loader is asked for)
    key: str  # its text in Redis keys and signatures: one per user, however the id was spelled


@dataclass(frozen=True, slots=True)
class Cached:
    user: Any
    auth_hash: str | None


def user_id(value: object, model: type[models.Model]) -> UserId:
    """The one boundary for user ids (callers' and sessions'): a primary key of ``model``, or InvalidName.

    An int, a str (printable, at most _MAX_ID_LENGTH characters) or (for a UUID pk) a UUID that the pk
    field accepts, canonicalised, so ``"7"`` and ``7`` share one entry and a bool, a float or ``b"7"``
    is refused rather than cached under a key no invalidation of user 7 would reach.
    """
    if isinstance(value, bool) or not isinstance(value, int | str | uuid.UUID):
        msg = f"user_id must be an int, a str or a UUID, not {type(value).__name__}"
        raise InvalidName(msg)
    if isinstance(value, str):
        keys.text(value, what="user_id", max_length=_MAX_ID_LENGTH)
    pk = model._meta.pk
    try:
        canonical = pk.to_python(value)
        pk.run_validators(canonical)
        text = str(canonical)
    except (ValidationError, TypeError, ValueError, OverflowError) as exc:
        msg = f"user_id is not a valid primary key of {model._meta.label} (a {type(value).__name__})"
        raise InvalidName(msg) from exc
    if canonical is None or len(text) > _MAX_ID_LENGTH or (isinstance(value, uuid.UUID) and canonical != value):
        msg = f"user_id is not a valid primary key of {model._meta.label}"
        raise InvalidName(msg)
    return UserId(canonical, keys.part(text))


def entry_key(uid: str) -> str:
    return keys.tagged(FEATURE, uid, "u")


def version_key(uid: str) -> str:
    return keys.tagged(FEATURE, uid, "v")


def encode(uid: str, user: Any, loader: Codec, ttl: int) -> str:
    """The sealed entry for ``user``, valid ``ttl`` seconds from now."""
    auth_hash = user.get_session_auth_hash() if hasattr(user, "get_session_auth_hash") else None
    body = json.dumps(
        {
            "f": _FORMAT,
            "m": user._meta.label_lower,
            "h": auth_hash,
            "x": _now_ms() + ttl * 1000,  # expiry: a replayed old entry is refused after it (app clock)
            "d": loader.dump(user),
        },
        default=_json_default,
        separators=(",", ":"),
    )
    return signing.seal(_ENTRY, uid, body)


def decode(uid: str, raw: bytes, loader: Codec) -> Cached | None:
    """The cached user, or None when the entry is not ours to trust (then counted as tampered)."""
    data, why = _unseal(uid, raw, loader)
    if data is not None:
        try:
            return Cached(loader.rebuild(data["d"]), data["h"])
        except (KeyError, TypeError, ValueError, ValidationError) as exc:  # a field changed type since it was cached
            why = f"could not be rebuilt ({type(exc).__name__})"
    signing.tampered(FEATURE, entry_key(uid), why)
    return None


def _now_ms() -> int:
    return int(clock.time() * 1000)


def _json_default(value: Any) -> Any:
    # Full precision (DjangoJSONEncoder would cut datetimes to milliseconds, and a save() would write that back).
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    msg = f"{type(value).__name__} is not a JSON-cacheable user field"
    raise TypeError(msg)


def _unseal(uid: str, raw: bytes, loader: Codec) -> tuple[dict[str, Any] | None, str]:
    """(fields, "") for an entry this process may trust, else (None, why not)."""
    body = signing.unseal(_ENTRY, uid, raw)
    if body is None:
        return None, "failed verification"
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None, "is not JSON"
    if not isinstance(data, dict) or data.get("f") != _FORMAT:
        return None, f"is not a format-{_FORMAT} entry"
    if data.get("m") != loader.model._meta.label_lower:
        return None, f"is for another user model than {loader.model._meta.label_lower}"
    if not isinstance(data.get("d"), dict) or not isinstance(data.get("h", 0), str | None):
        return None, "misses a field"
    expiry = data.get("x")
    if isinstance(expiry, bool) or not isinstance(expiry, int):
        return None, "misses a field"
    if _now_ms() > expiry + SKEW_MS:
        return None, "is past its expiry (replayed?)"
    return data, ""
