"""Signal receivers, wired explicitly from HotcacheConfig.ready() (none is connected at import time)."""

from __future__ import annotations

from typing import Any

from django.core.signals import setting_changed

__all__ = ["connect_signals", "settings_changed"]


def settings_changed(*, setting: str, **kwargs: Any) -> None:
    """The one reload hook: clients, gate and caches are built from settings; drop them when those change."""
    if setting in ("HOTCACHE", "CACHES"):
        from hotcache.backends import reset_all
        from hotcache.conf import hotcache_settings

        hotcache_settings.reload()
        reset_all()
    elif setting.startswith("RATELIMIT_"):
        # django-ratelimit's top-level settings, which the rate limiter reads through derived snapshots.
        from hotcache.conf import hotcache_settings

        hotcache_settings.reload()


def connect_signals() -> None:
    """Connect every receiver hotcache needs. Idempotent (dispatch_uid on each)."""
    setting_changed.connect(settings_changed, dispatch_uid="hotcache.signals.settings_changed")
    from hotcache import users

    users.connect()
