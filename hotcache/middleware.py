"""hotcache's middleware, importable from one place. Each lives in its feature's module; this re-exports them."""

from __future__ import annotations

__all__: list[str] = []

# --- Rate limiting (issue 3) ---

# --- Cached users (issue 4) ---

# --- Analytics (issue 8) ---
from hotcache.analytics import AnalyticsMiddleware

__all__ += ["AnalyticsMiddleware"]
