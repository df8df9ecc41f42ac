"""Response headers of a decision: the IETF ``RateLimit-Policy`` / ``RateLimit`` fields for the rules that opt in
(``headers: True``), and ``X-RateLimit-*`` with RATELIMIT_LEGACY_HEADERS. See docs/ratelimit.md.
"""

from __future__ import annotations

import math
from typing import Any

from hotcache.ratelimit.limits import Decision
from hotcache.ratelimit.options import Snapshot, settings_snapshot

__all__ = ["add_headers", "set_headers"]


def add_headers(response: Any, decision: Decision) -> None:
    """IETF RateLimit-Policy / RateLimit (and legacy X-RateLimit-*) for the rules that opt in."""
    set_headers(response, decision, settings_snapshot())


def set_headers(response: Any, decision: Decision, snapshot: Snapshot) -> None:
    """``add_headers`` with the settings snapshot the caller already holds (one settings read per request)."""
    shown = [r for r in decision.results if r.headers and r.evaluated]
    if not shown:
        return
    response["RateLimit-Policy"] = ", ".join(f'"{r.name}";q={r.limit};w={r.window}' for r in shown)
    response["RateLimit"] = ", ".join(f'"{r.name}";r={r.remaining};t={math.ceil(r.reset)}' for r in shown)
    if snapshot.legacy_headers:
        tightest = min(shown, key=lambda r: (r.remaining, -r.reset))
        response["X-RateLimit-Limit"] = str(tightest.limit)
        response["X-RateLimit-Remaining"] = str(tightest.remaining)
        response["X-RateLimit-Reset"] = str(math.ceil(tightest.reset))  # delta seconds, not an epoch
