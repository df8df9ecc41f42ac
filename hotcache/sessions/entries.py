"""What Redis holds for one session: the session-key boundary, the keys, and the sealed entry (docs/sessions.md).

Keys: ``<prefix>:{sessions:<session key>}:s`` (the entry) and ``...:v`` (its version counter), one hash tag,
so every script touches one slot. The entry is a ``hotcache.signing`` record (purpose ``sessions.entry``,
bound to the session key, so one session's data cannot be replayed under another key) of compact JSON::

    {"f": 1, "u": "<user key part>" | null, "x": <expiry, epoch ms>, "d": "<Django's encoded session data>"}

``d`` is exactly what the database row's ``session_data`` holds (``SessionBase.encode``: the configured
SESSION_SERIALIZER, signed and compressed by django.core.signing), so both stores decode alike. ``u`` is the
logged-in user's key part in hotcache.users' keys (``{users:<u>}``), readable without decoding ``d``: what a
later combined read needs to fetch the cached user in the same round trip as the session.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeGuard

from hotcache import clock, keys, signing

__all__ = ["FEATURE", "Entry", "decode", "encode", "entry_key", "valid_key", "version_key"]

FEATURE = "sessions"
_FORMAT = 1  # bump when the layout changes: entries of another format are then misses, refilled from the database
_PURPOSE = "sessions.entry"
# Django's own keys are 32 characters of [a-z0-9]; its database column holds at most 40. Anything else never
# reaches a key name (nor the database): it is no session.
_KEY = re.compile(r"[A-Za-z0-9]{8,40}")
SKEW_MS = 60_000  # an entry is trusted this long past its expiry: app clocks may disagree by that much


class Entry:
    """A decoded entry: Django's encoded session data and when the session expires (epoch ms)."""

    __slots__ = ("data", "expiry_ms", "user")

    def __init__(self, data: str, expiry_ms: int, user: str | None) -> None:
        self.data = data
        self.expiry_ms = expiry_ms
        self.user = user


def valid_key(session_key: object) -> TypeGuard[str]:
    """Whether ``session_key`` may name a Redis key: a string of 8-40 letters and digits."""
    return isinstance(session_key, str) and _KEY.fullmatch(session_key) is not None


def entry_key(session_key: str) -> str:
    return keys.tagged(FEATURE, session_key, "s")


def version_key(session_key: str) -> str:
    return keys.tagged(FEATURE, session_key, "v")


def encode(session_key: str, data: str, expiry_ms: int, user: str | None) -> str:
    """The sealed entry for a session whose database row holds ``data`` until ``expiry_ms``."""
    body = json.dumps({"f": _FORMAT, "u": user, "x": expiry_ms, "d": data}, separators=(",", ":"))
    return signing.seal(_PURPOSE, session_key, body)


def decode(session_key: str, raw: Any) -> Entry | None:
    """The entry, or None when it is not ours to trust or is past its expiry (counted as tampered if forged)."""
    body = signing.unseal(_PURPOSE, session_key, raw)
    if body is None:
        signing.tampered(FEATURE, entry_key(session_key))
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        value = None
    if (
        not isinstance(value, dict)
        or value.get("f") != _FORMAT
        or not isinstance(value.get("d"), str)
        or type(value.get("x")) is not int
        or not isinstance(value.get("u"), str | None)
    ):
        signing.tampered(FEATURE, entry_key(session_key), f"is not a format-{_FORMAT} entry")
        return None
    if clock.time() * 1000 > value["x"] + SKEW_MS:
        return None  # restored from an old snapshot or a lagging replica: the database decides
    return Entry(value["d"], value["x"], value["u"])
