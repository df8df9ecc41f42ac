"""Checks before any store is touched: session ids, owners, expected versions, and the state (a JSON object,
WORKBENCH_MAX_DEPTH levels, WORKBENCH_MAX_STATE_BYTES bytes); and the owner rule. See docs/workbench.md#api.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hotcache import keys
from hotcache.conf import hotcache_settings
from hotcache.exceptions import (
    InvalidName,
)
from hotcache.workbench._results import InvalidInput

_ID_PATTERN = r"[A-Za-z0-9_.@+\-]{1,64}"
_OWNER_PATTERN = r"[A-Za-z0-9_.:@+\-]{1,128}"
_MAX_VERSION = 2**53 - 1  # versions stay exact in JSON, Lua and MongoDB's int64


class _AnyOwner:
    def __repr__(self) -> str:
        return "ANY"


_ANY: Any = _AnyOwner()  # expected_owner not given (None means "expect no owner")


def _check_id(session_id: object) -> str:
    try:
        return keys.validate_name(session_id, what="workbench session id", pattern=_ID_PATTERN)
    except InvalidName as exc:
        raise InvalidInput("session_id", str(exc)) from None


def _check_owner(owner: object, field: str = "owner") -> str | None:
    if owner is None:
        return None
    if isinstance(owner, int) and not isinstance(owner, bool):
        if not -(10**127) < owner < 10**128:
            raise InvalidInput(field, f"workbench {field} is an integer of more than 128 digits")
        owner = str(owner)
    try:
        return keys.validate_name(owner, what=f"workbench {field}", pattern=_OWNER_PATTERN)
    except InvalidName as exc:
        raise InvalidInput(field, str(exc)) from None


def _check_expected_version(expected: object) -> int | None:
    if expected is None:
        return None
    if isinstance(expected, bool) or not isinstance(expected, int) or not 0 <= expected <= _MAX_VERSION:
        small = isinstance(expected, float | str) or (isinstance(expected, int) and abs(expected) < 10**40)
        shown = repr(expected)[:40] if small else type(expected).__name__  # (repr of a huge int raises)
        msg = f"expected_version must be a whole number from 0 to {_MAX_VERSION}, not {shown}"
        raise InvalidInput("expected_version", msg)
    return expected


def _too_deep(state: Mapping[str, Any], limit: int) -> int | None:
    """The first nesting depth over ``limit`` found in ``state`` (the state itself is depth 1), else None.

    Iterative, so a state nested far deeper than the interpreter's recursion limit (or a cyclic one) is
    refused with a ValueError instead of a RecursionError; at most ``limit`` levels are ever walked.
    """
    containers = (dict, list, tuple)  # what json encodes as objects and arrays (a tuple: the fastest isinstance)
    stack: list[tuple[Any, int]] = [(state.values(), 1)]
    while stack:
        children, depth = stack.pop()
        for child in children:
            if isinstance(child, containers):
                if depth >= limit:
                    return depth + 1
                stack.append((child.values() if isinstance(child, dict) else child, depth + 1))
    return None


def _encode_state(state: object) -> str:
    """The state as compact JSON; InvalidInput("state", reason) if it is not a JSON object hotcache keeps.

    Checked in this order, before any store is touched (the Redis path and the MongoDB fallback alike):
    a dict, nested at most WORKBENCH_MAX_DEPTH levels, JSON-serialisable, valid UTF-8 (no lone surrogate),
    at most WORKBENCH_MAX_STATE_BYTES bytes.
    """
    if not isinstance(state, Mapping):
        msg = f"workbench state must be a dict (a JSON object), not {type(state).__name__}"
        raise InvalidInput("state", msg)
    limit = int(hotcache_settings.WORKBENCH_MAX_DEPTH)
    depth = _too_deep(state, limit)
    if depth is not None:
        msg = (
            f"workbench state nests objects and arrays {depth} levels deep (at least); at most {limit} are "
            "allowed (HOTCACHE['WORKBENCH_MAX_DEPTH'])"
        )
        raise InvalidInput("state", msg)
    try:
        text = json.dumps(dict(state), separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        msg = f"workbench state is not JSON-serialisable: {str(exc)[:200]}"
        raise InvalidInput("state", msg) from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        msg = (
            f"workbench state holds a lone surrogate (U+{ord(text[exc.start]):04X}), which is not valid UTF-8: "
            "keys and strings must be proper Unicode text"
        )
        raise InvalidInput("state", msg) from None
    limit = int(hotcache_settings.WORKBENCH_MAX_STATE_BYTES)
    if size > limit:
        msg = (
            f"workbench state is {size} bytes as JSON, over the limit of {limit} "
            "(HOTCACHE['WORKBENCH_MAX_STATE_BYTES'])"
        )
        raise InvalidInput("state", msg)
    return text


def _owner_refused(current: str | None, owner: str | None, expected_owner: object) -> bool:
    """The owner rule: a save may not change the owner unless it names the current one in expected_owner."""
    if expected_owner is not _ANY:
        return expected_owner != current
    return owner is not None and owner != current
