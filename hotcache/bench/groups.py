"""The benchmark groups, one module per feature. A feature adds its module and one line in all_groups()."""

from __future__ import annotations

from collections.abc import Callable

from hotcache.bench import foundation
from hotcache.bench import reports as reports_bench  # reports (issue 9)
from hotcache.bench.runner import Arm

__all__ = ["all_groups"]


def all_groups() -> dict[str, Callable[[], dict[str, list[Arm]]]]:
    """Feature name -> a function returning {group title: arms}. Groups are built only when selected."""
    groups: dict[str, Callable[[], dict[str, list[Arm]]]] = {"foundation": foundation.arms}
    # --- Rate limiting (issue 3) ---
    groups["ratelimit"] = __import__("hotcache.bench.ratelimit", fromlist=["arms"]).arms
    # --- Cached users (issue 4) ---
    from hotcache.bench import users as users_bench
    groups["users"] = users_bench.arms
    # --- MFA codes (issue 5) ---
    from hotcache.bench import mfa as mfa_bench

    groups["mfa"] = mfa_bench.arms
    # --- API keys (issue 6) ---
    from hotcache.bench import apikeys as apikeys_bench
    groups["apikeys"] = apikeys_bench.arms
    # --- Workbench (issue 7) ---
    groups["workbench"] = __import__("hotcache.bench.workbench", fromlist=["arms"]).arms
    # --- Analytics (issue 8) ---

    # --- Reports (issue 9) ---
    groups["reports"] = reports_bench.arms
    return groups
