"""Stable import path of the DRF adapter: hotcache.apikeys_drf.ApiKeyAuthentication (see hotcache.apikeys.drf)."""

from __future__ import annotations

from hotcache.apikeys.drf import ApiKeyAuthentication, HasApiKey

__all__ = ["ApiKeyAuthentication", "HasApiKey"]
