"""The only place Redis keys are built.

Shape: ``<KEY_PREFIX>:<feature>:<part>:<part>...``. A part that a user could influence (an IP, a
user id, an event name) is kept verbatim only when it is short and made of ``[A-Za-z0-9_.@+-]``;
anything else becomes ``~`` plus 128 bits of its SHA-256, so no input can add a ``:``, a ``{``, a
glob character or a newline to a key, or collide with another key. Keys that one Lua script
touches together carry the same hash tag (``{...}``) so the script also runs on Redis Cluster.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import re

from hotcache.conf import hotcache_settings
from hotcache.exceptions import InvalidName

__all__ = [
    "bucket_count",
    "bucket_of",
    "bucket_tags",
    "build",
    "part",
    "prefix",
    "slot",
    "tagged",
    "text",
    "validate_name",
]

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


SLOTS = 16384  # Redis Cluster's hash slots
MAX_BUCKETS = 1024


def bucket_count() -> int:
    """How many hash tags (buckets) a spread feature uses: KEY_BUCKETS, else 64 on a cluster and 1 (the
    single-tag layout of earlier versions, no extra commands) on a single server."""
    configured = hotcache_settings.KEY_BUCKETS
    if configured is None:
        return 64 if hotcache_settings.REDIS_CLUSTER is True else 1
    return max(1, min(MAX_BUCKETS, int(configured)))


def bucket_of(value: object, count: int) -> int:
    """The bucket (0..count-1) of a session id, an event key or a key digest: a stable hash, the same in every
    process and version (never Python's salted ``hash()``)."""
    if count <= 1:
        return 0
    text_ = value if isinstance(value, str) else str(value)
    digest = hashlib.blake2b(text_.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def slot(tag_text: str) -> int:
    """Redis Cluster's hash slot of a hash tag's text (CRC16-XMODEM mod 16384, as the server computes it)."""
    return binascii.crc_hqx(tag_text.encode("utf-8"), 0) % SLOTS


def bucket_tags(feature: str, legacy: str, count: int) -> tuple[str, ...]:
    """The ``count`` hash tags of a spread feature, bucket ``b`` first at index ``b``.

    ``count`` 1 is the single tag ``legacy`` of earlier versions. Otherwise bucket ``b``'s tag is the first of
    ``<legacy>.<b>.<k>`` (k = 0, 1, ...) whose slot falls in the b-th of ``count`` equal slot ranges: so the
    buckets cover the slot space evenly, and any cluster whose masters hold contiguous, even slot ranges holds
    an even share of them (not left to the luck of CRC16 over a few dozen tags).
    """
    return _bucket_tags(feature, legacy, max(1, min(MAX_BUCKETS, count)))


@functools.lru_cache(maxsize=64)
def _bucket_tags(feature: str, legacy: str, count: int) -> tuple[str, ...]:
    if count == 1:
        return (legacy,)
    tags = []
    for b in range(count):
        low, high = b * SLOTS // count, (b + 1) * SLOTS // count
        k = 0
        while not low <= slot(f"{feature}:{legacy}.{b}.{k}") < high:
            k += 1
        tags.append(f"{legacy}.{b}.{k}")
    return tuple(tags)


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
