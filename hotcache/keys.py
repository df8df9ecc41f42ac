"""The only place Redis keys are built.

Shape: ``<KEY_PREFIX>:<feature>:<part>:<part>...``. A part that a user could influence (an IP, a
user id, an event name) is kept verbatim only when it is short and made of ``[A-Za-z0-9_.@+-]``;
anything else becomes ``~`` plus 128 bits of its SHA-256, so no input can add a ``:``, a ``{``, a
glob character or a newline to a key, or collide with another key. Keys that one Lua script
touches together carry the same hash tag (``{...}``) so the script also runs on Redis Cluster.
"""

from __future__ import annotations

import hashlib
import re

from hotcache.conf import hotcache_settings
from hotcache.exceptions import InvalidName

__all__ = ["build", "part", "prefix", "tagged", "validate_name"]

_SAFE = re.compile(r"[A-Za-z0-9_.@+\-]{1,64}")
_FEATURE = re.compile(r"[a-z][a-z0-9_]{0,31}")


def prefix() -> str:
    return str(hotcache_settings.KEY_PREFIX)


def part(value: object) -> str:
    """One key segment: the value itself when safe, else a digest that cannot collide with a safe value."""
    text = value if isinstance(value, str) else str(value)
    if _SAFE.fullmatch(text):
        return text
    return "~" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def build(feature: str, *parts: object) -> str:
    """A key under ``feature``; every part goes through part()."""
    if not _FEATURE.fullmatch(feature):
        msg = f"feature name {feature!r} must match {_FEATURE.pattern}"
        raise ValueError(msg)
    return ":".join([prefix(), feature, *(part(p) for p in parts)])


def tagged(feature: str, tag: object, *parts: object) -> str:
    """A key whose hash tag is ``{<feature>:<tag>}``: every key built with the same tag lands in one slot."""
    if not _FEATURE.fullmatch(feature):
        msg = f"feature name {feature!r} must match {_FEATURE.pattern}"
        raise ValueError(msg)
    head = f"{prefix()}:{{{feature}:{part(tag)}}}"
    return ":".join([head, *(part(p) for p in parts)])


def validate_name(value: object, *, what: str, pattern: str = r"[A-Za-z0-9_.:@+\-]{1,128}") -> str:
    """Return ``value`` if it is a string matching ``pattern``, else raise InvalidName naming ``what``."""
    if not isinstance(value, str):
        msg = f"{what} must be a string, not {type(value).__name__}"
        raise InvalidName(msg)
    if not re.fullmatch(pattern, value):
        msg = f"{what} {value[:80]!r} is invalid: it must match {pattern}"
        raise InvalidName(msg)
    return value
