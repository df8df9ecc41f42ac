"""Fixtures for the API key tests. A test run shares one Redis key prefix, so without this a test's
sync_usage() would also find the keys earlier tests used today in the day's touched index."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _empty_touched_index(raw_redis, key_prefix):
    """Each test starts with no touched-key index (``{apikeys:touched}:<day>``, every bucket of it) left by an
    earlier test."""
    for key in list(raw_redis.scan_iter(match=f"{key_prefix}:{{apikeys:touched*}}:*")):
        raw_redis.delete(key)
