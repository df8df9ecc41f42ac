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

__all__ = ["build", "part", "prefix", "tagged", "text", "validate_name"]

_SAFE = re.compile(r"[A-Za-z0-9_.@+\-]{1,64}")
_FEATURE = re.compile(r"[a-z][a-z0-9_]{0,31}")
# C0 controls (NUL included), DEL, C1 controls, and lone UTF-16 surrogates (not encodable as UTF-8).
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


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


def text(value: object, *, what: str, max_length: int, allow_empty: bool = False) -> str:
    """Return ``value`` if it is printable text hotcache can store, else raise InvalidName naming ``what``.

    The one input boundary for free text a user supplies (a path, a header value): it must be a
    ``str`` of at most ``max_length`` characters with no control character (NUL included) and no lone
    surrogate, so it always encodes as UTF-8 and never reaches a store or a log line as anything else.
    """
    if not isinstance(value, str):
        msg = f"{what} must be a string, not {type(value).__name__}"
        raise InvalidName(msg)
    if not value and not allow_empty:
        msg = f"{what} must not be empty"
        raise InvalidName(msg)
    if len(value) > max_length:
        msg = f"{what} is {len(value)} characters long; at most {max_length} are allowed"
        raise InvalidName(msg)
    bad = _UNSAFE_TEXT.search(value)
    if bad is not None:
        msg = (
            f"{what} holds the character U+{ord(bad.group()):04X} at position {bad.start()}: "
            "control characters and lone surrogates are not allowed"
        )
        raise InvalidName(msg)
    return value
