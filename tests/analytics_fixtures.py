"""Moved to tests/analytics/fixtures.py; kept for other features' tests that still import the autouse fixture."""

from tests.analytics.fixtures import _empty_fallback_buffer  # noqa: F401
