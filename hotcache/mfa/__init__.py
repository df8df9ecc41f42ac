"""MFA one-time codes: issue() and verify(). Hashed at rest, single use across outages, bounded guessing.

Redis is the hot path (one round trip each), MongoDB the fallback. API, costs, cross-store rules,
failure table and benchmarks: docs/mfa.md.
"""

from __future__ import annotations

from hotcache.mfa._conf import COLLECTION as COLLECTION
from hotcache.mfa._conf import FEATURE as FEATURE
from hotcache.mfa._issue import issue
from hotcache.mfa._results import MfaUnavailable, Reason, ResendTooSoon, VerifyResult
from hotcache.mfa._verify import verify

__all__ = ["MfaUnavailable", "Reason", "ResendTooSoon", "VerifyResult", "issue", "verify"]
