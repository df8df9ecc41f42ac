"""The benchmark groups, one module per feature. A feature adds its module and one line in all_groups()."""

from __future__ import annotations

from collections.abc import Callable

from hotcache.bench import foundation
from hotcache.bench.runner import Arm

__all__ = ["all_groups"]


def _analytics_arms() -> dict[str, list[Arm]]:  # Analytics (issue 8): imported when selected
    from hotcache.bench import analytics

    return analytics.arms()


def all_groups() -> dict[str, Callable[[], dict[str, list[Arm]]]]:
    """Feature name -> a function returning {group title: arms}. Groups are built only when selected."""
    groups: dict[str, Callable[[], dict[str, list[Arm]]]] = {"foundation": foundation.arms}
    # --- Rate limiting (issue 3) ---
    # --- Cached users (issue 4) ---
    # --- MFA codes (issue 5) ---
    # --- API keys (issue 6) ---
    # --- Workbench (issue 7) ---
    # --- Analytics (issue 8) ---
    groups["analytics"] = _analytics_arms
    return groups
