"""Making and revoking API keys: the key record in MongoDB, the revocation tombstone in Redis.

See docs/apikeys.md ("API", "Revocation").
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import string

from hotcache import clock, keys, metering
from hotcache.apikeys import _recovery
from hotcache.apikeys._documents import keys_coll
from hotcache.apikeys._index import tombstone_ttl
from hotcache.apikeys._inputs import MAX_DAILY_LIMIT, MAX_NAME, key_id_or_none, not_found, owner_text
from hotcache.apikeys._records import digest_of, meta_key, tag_of, tombstone
from hotcache.apikeys._results import FEATURE, PREFIX_LEN, NewKey
from hotcache.backends import redis as redis_backend
from hotcache.exceptions import DuplicateKey, HotcacheError, RedisUnavailable

__all__ = ["create", "revoke"]

log = logging.getLogger("hotcache.apikeys")

_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_BYTES = 32  # 256 bits; token_urlsafe gives 43 characters


def create(
    owner: str | int,
    name: str = "",
    daily_limit: int | None = None,
    expires_at: dt.datetime | None = None,
) -> NewKey:
    """Make a key for ``owner``; the raw key is in the result only (store it now: it cannot be shown again).

    Raises ValueError for a bad limit or expiry and InvalidName (a ValueError) for an owner or name that is
    not text hotcache stores (see keys.text); nothing is written then.
    """
    if daily_limit is not None and (
        not isinstance(daily_limit, int) or isinstance(daily_limit, bool) or not 1 <= daily_limit <= MAX_DAILY_LIMIT
    ):
        msg = f"daily_limit must be a whole number from 1 to {MAX_DAILY_LIMIT} or None, not {daily_limit!r:.80}"
        raise ValueError(msg)
    if expires_at is not None and (not isinstance(expires_at, dt.datetime) or expires_at.tzinfo is None):
        msg = "expires_at must be a timezone-aware datetime (UTC) or None"
        raise ValueError(msg)
    owner_str = owner_text(owner)
    name_text = keys.text(name, what="name", max_length=MAX_NAME, allow_empty=True)
    coll = keys_coll()
    for _ in range(5):  # a prefix collision (1 in 2.8e12 per pair) just draws again
        prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LEN))
        raw_key = f"{prefix}.{secrets.token_urlsafe(_SECRET_BYTES)}"
        key_id = f"ak_{secrets.token_hex(8)}"
        doc = {
            "_id": key_id,
            "key_id": key_id,
            "prefix": prefix,
            "key_sha256": digest_of(raw_key),
            "owner": owner_str,
            "name": name_text,
            "daily_limit": daily_limit,
            "created_at": clock.utcnow(),
            "expires_at": expires_at.astimezone(dt.UTC) if expires_at else None,
            "revoked_at": None,
        }
        try:
            coll.insert_one(doc)
        except DuplicateKey:
            continue
        metering.event(FEATURE, "created")
        log.info("hotcache apikeys: created key %s (prefix %s) for owner %s", key_id, prefix, owner_str)
        return NewKey(key_id=key_id, raw_key=raw_key)
    msg = "could not draw a unique API key id"
    raise HotcacheError(msg)


def revoke(key_id: str) -> bool:
    """Revoke a key for good; effective on the next call in every process. False if it was already revoked."""
    wanted = key_id_or_none(key_id)
    coll = keys_coll()
    doc = coll.find_one({"key_id": wanted}) if wanted else None
    if doc is None:
        raise not_found(key_id)
    newly = coll.update_one({"key_id": doc["key_id"], "revoked_at": None}, {"$set": {"revoked_at": clock.utcnow()}})
    tag = tag_of(doc["key_sha256"])
    ttl = tombstone_ttl()
    try:
        # Overwrite (not just delete) the cached record: a cold load that read MongoDB before the update
        # above cannot cache the key as valid again while this tombstone lives (the script refuses).
        redis_backend.call(FEATURE, lambda r: r.set(meta_key(tag), tombstone(tag), ex=ttl))
    except RedisUnavailable:
        # The cached record outlives this call only as long as Redis is unreachable for us; make the
        # next successful check in this process write the tombstone first.
        _recovery.revokes.add(tag)
        log.warning("hotcache apikeys: redis unavailable while revoking %s; tombstone deferred", doc["key_id"])
    if newly:
        metering.event(FEATURE, "revoked")
        log.info("hotcache apikeys: revoked key %s (prefix %s)", doc["key_id"], doc["prefix"])
    return bool(newly)
