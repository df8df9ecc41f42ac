"""API keys: hashed at rest, validated and counted in one Redis round trip, daily limits exact under concurrency.

``create`` / ``check`` / ``revoke`` / ``get`` / ``list_keys`` / ``usage`` / ``usage_many`` / ``sync_usage``,
the view decorator ``require_api_key``, the header parser ``key_from_request`` / ``key_from_headers``, and
(with djangorestframework) ``hotcache.apikeys_drf.ApiKeyAuthentication``. Key records and the usage history
live in MongoDB; Redis caches signed records and counts. Everything else: docs/apikeys.md.
"""

from __future__ import annotations

from hotcache.apikeys._documents import KEYS_COLLECTION, USAGE_COLLECTION
from hotcache.apikeys._hot import check
from hotcache.apikeys._lifecycle import create, revoke
from hotcache.apikeys._reads import get, list_keys, usage, usage_many
from hotcache.apikeys._results import InvalidKey, KeyInfo, KeyNotFound, NewKey, Usage, UsageSyncResult
from hotcache.apikeys._sync import sync_usage
from hotcache.apikeys.decorators import require_api_key
from hotcache.apikeys.headers import key_from_headers, key_from_request

__all__ = [
    "KEYS_COLLECTION",
    "USAGE_COLLECTION",
    "InvalidKey",
    "KeyInfo",
    "KeyNotFound",
    "NewKey",
    "SyncResult",
    "Usage",
    "UsageSyncResult",
    "check",
    "create",
    "get",
    "key_from_headers",
    "key_from_request",
    "list_keys",
    "require_api_key",
    "revoke",
    "sync_usage",
    "usage",
    "usage_many",
]

SyncResult = UsageSyncResult  # the name before analytics got a SyncResult of its own
