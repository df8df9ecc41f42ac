"""The one input boundary of the API key functions: owners, key ids, day windows and limits.

See docs/apikeys.md ("API").
"""

from __future__ import annotations

from hotcache import keys
from hotcache.apikeys._results import KeyNotFound
from hotcache.exceptions import InvalidName

__all__ = ["days_window", "key_id_or_none", "not_found", "owner_text"]

MAX_OWNER = 256
MAX_NAME = 200
MAX_DAILY_LIMIT = 10**12  # exact in Lua's doubles, BSON's int64 and Redis's counters alike
MAX_DAYS = 3660  # usage()/usage_many()/sync_usage() windows: ten years
_KEY_ID_PATTERN = r"[A-Za-z0-9_\-]{1,64}"  # create() makes ak_<16 hex>; anything else is simply not found


def owner_text(owner: object) -> str:
    """The one boundary for an owner (create() and list_keys()): text or a whole number, InvalidName otherwise."""
    if isinstance(owner, int) and not isinstance(owner, bool):
        owner = str(owner)  # an int of over 256 digits is refused below as too long
    elif not isinstance(owner, str):
        msg = f"owner must be a string or a whole number, not {type(owner).__name__}"
        raise InvalidName(msg)
    return keys.text(owner, what="owner", max_length=MAX_OWNER)


def key_id_or_none(value: object) -> str | None:
    """``value`` if it can be a key id, else None: callers answer as for an unknown id (no store is asked)."""
    try:
        return keys.validate_name(value, what="key_id", pattern=_KEY_ID_PATTERN)
    except InvalidName:
        return None


def days_window(days: object) -> int:
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
        msg = f"days must be a whole number from 1 to {MAX_DAYS}"
        raise ValueError(msg)
    return days


def not_found(key_id: object) -> KeyNotFound:
    return KeyNotFound(f"no API key with id {repr(key_id)[:80]}")
