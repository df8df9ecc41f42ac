"""hotcache's middleware, importable from one place. Each lives in its feature's module; this re-exports them."""

from __future__ import annotations

from hotcache.analytics import AnalyticsMiddleware
from hotcache.ratelimit_middleware import RateLimitMiddleware
from hotcache.users import CachedAuthenticationMiddleware

__all__ = ["AnalyticsMiddleware", "CachedAuthenticationMiddleware", "RateLimitMiddleware"]
