"""What every check module shares: how a setting is named in a message, number checks, schedule reading."""

from __future__ import annotations

import os
import re
from typing import Any

from django.core.checks import CheckMessage, Error

from hotcache.conf import DEFAULTS, hotcache_settings

__all__ = ["MONGO_FEATURES", "PREFIX", "number_setting_errors", "schedule_seconds", "setting", "settings_module"]

MONGO_FEATURES = ("mfa", "apikeys", "workbench", "analytics")
PREFIX = re.compile(r"[A-Za-z0-9_.\-]{1,32}")


def setting(name: str) -> str:
    return f"HOTCACHE[{name!r}]"


def number_setting_errors(
    names: tuple[str, ...], *, minimum: float = 0, integer: bool = False, allow_zero: bool = False
) -> list[CheckMessage]:
    """hotcache.E004 for every named setting that is not a positive number (or int)."""
    errors: list[CheckMessage] = []
    for name in names:
        value = getattr(hotcache_settings, name)
        kind = int if integer else (int, float)
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok:
            ok = value >= minimum if allow_zero else value > minimum
        if not ok:
            errors.append(
                Error(
                    f"{setting(name)}={value!r} is not a valid value.",
                    hint=f"Use a {'whole ' if integer else ''}number greater than {minimum}"
                    f"{' or equal to it' if allow_zero else ''} (default {DEFAULTS[name]!r}).",
                    id="hotcache.E004",
                )
            )
    return errors


def settings_module() -> str:
    return os.environ.get("DJANGO_SETTINGS_MODULE", "")


def schedule_seconds(schedule: Any) -> float | None:
    if isinstance(schedule, int | float) and not isinstance(schedule, bool):
        return float(schedule)
    if hasattr(schedule, "total_seconds"):
        return float(schedule.total_seconds())
    run_every = getattr(schedule, "run_every", None)  # celery.schedules.schedule
    return float(run_every.total_seconds()) if run_every is not None else None
