"""Key format and digests, the Redis keys of an API key, and the signed values cached there.

A key is ``<prefix>.<secret>``; only its SHA-256 is stored, and 128 bits of that digest (the *tag*)
name the key's Redis keys. See docs/apikeys.md ("Redis keys", "Tampered Redis").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from typing import Any

from django.conf import settings as django_settings

from hotcache import keys, signing
from hotcache.apikeys._results import FEATURE, PREFIX_LEN, invalid
from hotcache.conf import hotcache_settings

__all__ = [
    "Cached",
    "base_key",
    "count",
    "count_key",
    "counter_ttl",
    "day_name",
    "digest_of",
    "meta_key",
    "open_meta",
    "parse",
    "sealed_record",
    "tag_of",
    "text",
    "token_key",
    "tombstone",
    "touched_key",
    "touched_keys",
    "touched_member",
    "undo_key",
    "unknown",
    "use_key",
    "writer_key",
]

KEY_RE = re.compile(r"[a-z0-9]{8}\.[A-Za-z0-9_\-]{43}", re.ASCII)
MAX_HEADER = 200  # longer header values are rejected before any parsing
META = "apikeys.meta"  # signing purpose of a key's cached value (record, tombstone or 'unknown'); ident: its tag
TOUCHED = "apikeys.touched"  # signing purpose of a touched-index member; ident: the day
FRESH_MARGIN = 60  # seconds a cached record's "u" lies beyond its Redis TTL (both on Redis's clock)
TOKEN_TTL = 86400  # seconds a writer's last-counted sequence stays in a key's token hash after its last check
_COUNT_RE = re.compile(rb"[0-9]{1,18}")  # a day counter as the scripts accept it (never negative)
_VERIFIED_MAX = 4096


def digest_of(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("ascii")).hexdigest()


def tag_of(digest: str) -> str:
    # 128 bits of the digest name the key's Redis keys; the full digest is compared in the record.
    return digest[:32]


def parse(raw_key: object) -> tuple[str, str]:
    """(digest, prefix) of a well-formed key, else InvalidKey (nothing of a malformed key is logged)."""
    if not isinstance(raw_key, str) or len(raw_key) > MAX_HEADER or not KEY_RE.fullmatch(raw_key):
        raise invalid("malformed", "")
    return digest_of(raw_key), raw_key[:PREFIX_LEN]


def day_name(day: dt.date) -> str:
    return day.isoformat()


def counter_ttl() -> int:
    return int(hotcache_settings.APIKEY_USAGE_RETENTION_DAYS) * 86400


# --- Redis keys: one hash tag per API key, so its check script runs on Redis Cluster too -------------


def meta_key(tag: str) -> str:
    return keys.tagged(FEATURE, tag, "meta")


def count_key(tag: str, day: dt.date) -> str:
    # The day's count the limit is checked on: this Redis's uses plus the base (uses counted on MongoDB).
    return keys.tagged(FEATURE, tag, "n", day.strftime("%Y%m%d"))


def use_key(tag: str, day: dt.date) -> str:
    # The previous layout's day counter (this Redis's uses only): a new count_key starts from it, then deletes it.
    return keys.tagged(FEATURE, tag, "use", day.strftime("%Y%m%d"))


def base_key(tag: str, day: dt.date) -> str:
    return keys.tagged(FEATURE, tag, "base", day.strftime("%Y%m%d"))


def undo_key(tag: str, day: dt.date) -> str:
    # Uses taken back from the day's counter (apikey_resolve.lua): the sync copies counter + undo, never lower.
    return keys.tagged(FEATURE, tag, "undo", day.strftime("%Y%m%d"))


def token_key(tag: str) -> str:
    # The previous layout's writer hash (writer -> "<seq>:<time>[:u]"); nothing reads it now, it expires.
    return keys.tagged(FEATURE, tag, "tok")


def writer_key(tag: str, writer: str) -> str:
    # "<seq>:<time>[:u]": the last check this writer (process nonce:thread) counted on this key (SET ... GET).
    return keys.tagged(FEATURE, tag, "w", writer)


def touched_key(day: dt.date, tag: str | None = None) -> str:
    """The set of the day's keys counted on Redis (members ``<key_id>:<tag>``) that holds the key of ``tag``.

    Spread over keys.bucket_count() hash tags by the key's tag (``{apikeys:touched.<b>.<k>}``), so no master holds
    the whole index on Redis Cluster; one bucket is the single-tag layout ``{apikeys:touched}`` (``tag`` None: it).
    """
    count = keys.bucket_count() if tag is not None else 1
    bucket = keys.bucket_tags(FEATURE, "touched", count)[keys.bucket_of(tag, count)]
    return keys.tagged(FEATURE, bucket, day.strftime("%Y%m%d"))


def touched_keys(day: dt.date) -> list[str]:
    """Every set of the day's touched index: each bucket's, then the single-tag layout's when it is not one of
    them (written before the index was spread, or before KEY_BUCKETS changed: read for the retention period)."""
    stamp = day.strftime("%Y%m%d")
    out = [keys.tagged(FEATURE, t, stamp) for t in keys.bucket_tags(FEATURE, "touched", keys.bucket_count())]
    legacy = touched_key(day)
    return out if legacy in out else [*out, legacy]


# --- signed values -------------------------------------------------------------------------------


def sealed_record(doc: dict[str, Any], tag: str, redis_now: float) -> str:
    """The key's cached record, signed: every field a check decides on (owner, limit, expiry, digest), and
    ``u``, the Redis time after which the script refuses it: a genuine record written back later (to use a
    key revoked since) is good for at most APIKEY_CACHE_TTL + FRESH_MARGIN seconds after it was made."""
    exp = doc.get("expires_at")
    body = {
        "id": doc["key_id"],
        "owner": doc["owner"],
        "limit": doc.get("daily_limit"),
        "exp": exp.timestamp() if exp else None,
        "h": doc["key_sha256"],
        "u": int(redis_now) + int(hotcache_settings.APIKEY_CACHE_TTL) + FRESH_MARGIN,
    }
    return signing.seal_json(META, tag, body)


def tombstone(tag: str) -> str:
    return signing.seal(META, tag, "revoked")


def unknown(tag: str) -> str:
    return signing.seal(META, tag, "unknown")


def touched_member(day: dt.date, body: str) -> str:
    """A touched-index member (body ``<key_id>:<tag>``), signed: sync_usage() writes MongoDB history from it."""
    return signing.seal(TOUCHED, day_name(day), body)


@dataclasses.dataclass(frozen=True, slots=True)
class Cached:
    """A verified cached value: a key record, or the 'revoked' tombstone, or the 'unknown' marker."""

    kind: str  # "key" | "revoked" | "unknown"
    key_id: str = ""
    owner: str = ""
    limit: int | None = None
    digest: str = ""


_verified: dict[tuple[str, bytes], tuple[tuple[Any, ...], Cached]] = {}  # see open_meta


def open_meta(tag: str, raw: object) -> Cached | None:
    """The cached value at the key's meta if hotcache signed it for this tag and it is well formed, else None.

    The answer for exact bytes already verified under the same secrets is remembered (at most _VERIFIED_MAX
    values, then forgotten at once): a warm check of a cached record spends no HMAC and no JSON parse.
    """
    keyring = (django_settings.SECRET_KEY, *getattr(django_settings, "SECRET_KEY_FALLBACKS", ()))
    memo = (tag, raw) if isinstance(raw, bytes) else None
    if memo is not None:
        known = _verified.get(memo)
        if known is not None and known[0] == keyring:
            return known[1]
    cached = _verify_meta(tag, raw)
    if cached is not None and memo is not None:
        if len(_verified) >= _VERIFIED_MAX:
            _verified.clear()
        _verified[memo] = (keyring, cached)
    return cached


def _verify_meta(tag: str, raw: object) -> Cached | None:
    body = signing.unseal(META, tag, raw)
    if body is None:
        return None
    if body in ("revoked", "unknown"):
        return Cached(body)
    try:
        m = json.loads(body)
    except ValueError:
        return None
    if not isinstance(m, dict):
        return None
    key_id, owner, digest, limit, exp, until = (m.get(f) for f in ("id", "owner", "h", "limit", "exp", "u"))
    if not (isinstance(key_id, str) and isinstance(owner, str) and isinstance(digest, str)):
        return None
    if type(until) is not int:  # the script refuses a record past it (on Redis's clock)
        return None
    if limit is not None and type(limit) is not int:
        return None
    if exp is not None and type(exp) not in (int, float):
        return None
    return Cached("key", key_id, owner, limit, digest)


def count(value: object) -> int | None:
    """A day counter as Redis returned it (absent = 0); None when it is not a whole number the scripts accept."""
    if value is None:
        return 0
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    if isinstance(value, bytes) and _COUNT_RE.fullmatch(value):
        return int(value)
    return None


def text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
