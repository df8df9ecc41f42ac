"""Shared by the MFA suites: every test starts with no mfa keys in the run's prefix and no outage remembered."""

from __future__ import annotations

import pytest

from hotcache.mfa import _marker
from hotcache.testing import new_process


@pytest.fixture(autouse=True)
def _no_mfa_keys_from_earlier_tests(raw_redis, key_prefix):
    """The run's key prefix is shared by every test: start each with no mfa keys, no outage marker and no
    outage remembered by this process."""
    stale = list(raw_redis.scan_iter(match=f"{key_prefix}:{{mfa:*", count=1000))
    raw_redis.delete(*stale, _marker.marker_key(), *_marker.marker_keys())
    new_process()
