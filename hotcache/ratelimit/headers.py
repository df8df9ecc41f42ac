"""Response headers of a decision: the IETF ``RateLimit-Policy`` / ``RateLimit`` fields for the rules that opt in
(``headers: True``), and ``X-RateLimit-*`` with RATELIMIT_LEGACY_HEADERS. See docs/ratelimit.md.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from typing import Any

from hotcache.ratelimit.limits import Decision
from hotcache.ratelimit.options import Snapshot, settings_snapshot

__all__ = ["add_headers", "set_headers"]

_SF_SAFE = re.compile(r"[\x20-\x7e]{1,200}")  # what a structured-field string may hold (RFC 8941)


def add_headers(response: Any, decision: Decision) -> None:
    """IETF RateLimit-Policy / RateLimit (and legacy X-RateLimit-*) for the rules that opt in."""
    set_headers(response, decision, settings_snapshot())


def set_headers(response: Any, decision: Decision, snapshot: Snapshot) -> None:
    """``add_headers`` with the settings snapshot the caller already holds (one settings read per request)."""
    shown = [r for r in decision.results if r.headers and r.source != "skipped"]  # r.evaluated, inlined
    if not shown:
        return
    if len(shown) == 1:  # the common case, without the joins
        r = shown[0]
        response["RateLimit-Policy"] = _policy(r.name, r.limit, r.window)
        response["RateLimit"] = f"{_sf_string(r.name)};r={r.remaining};t={math.ceil(r.reset)}"
    else:
        response["RateLimit-Policy"] = ", ".join([_policy(r.name, r.limit, r.window) for r in shown])
        response["RateLimit"] = ", ".join(
            [f"{_sf_string(r.name)};r={r.remaining};t={math.ceil(r.reset)}" for r in shown]
        )
    if snapshot.legacy_headers:
        tightest = min(shown, key=lambda r: (r.remaining, -r.reset))
        response["X-RateLimit-Limit"] = str(tightest.limit)
        response["X-RateLimit-Remaining"] = str(tightest.remaining)
        response["X-RateLimit-Reset"] = str(math.ceil(tightest.reset))  # delta seconds, not an epoch


@functools.lru_cache(maxsize=1024)
def _policy(name: str, limit: int, window: int) -> str:
    """One rule's RateLimit-Policy item: the same for every request, so formatted once."""
    return f"{_sf_string(name)};q={limit};w={window}"


@functools.lru_cache(maxsize=1024)
def _sf_string(name: str) -> str:
    """A policy name as a structured-field string. Rule names always fit; a decorator's group (any printable
    text) is escaped, or replaced by a digest when it holds characters a header field cannot carry."""
    if _SF_SAFE.fullmatch(name):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return '"~' + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16] + '"'
