"""The benchmark groups, one module per feature (config/demo/bench/<feature>.py with an arms() function)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from config.demo.bench.runner import Arm

__all__ = ["FEATURES", "all_groups"]

FEATURES = (
    "foundation",
    "ratelimit",
    "users",
    "sessions",
    "mfa",
    "apikeys",
    "workbench",
    "analytics",
    "reports",
    "aio",
)


def _lazy(feature: str) -> Callable[[], dict[str, list[Arm]]]:
    # Imported only when selected: some arms pull in anchors (django-ratelimit) or build large fixtures.
    return lambda: import_module(f"config.demo.bench.{feature}").arms()


def all_groups() -> dict[str, Callable[[], dict[str, list[Arm]]]]:
    """Feature name -> a function returning {group title: arms}. Groups are built only when selected."""
    return {feature: _lazy(feature) for feature in FEATURES}
