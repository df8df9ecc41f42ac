"""hotcache's middleware, importable from one place. Each lives in its feature's module; this re-exports them."""

from __future__ import annotations

__all__: list[str] = []

# --- Rate limiting (issue 3) ---

# --- Cached users (issue 4) ---
from hotcache.users import CachedAuthenticationMiddleware

__all__ += ["CachedAuthenticationMiddleware"]

# --- Analytics (issue 8) ---
