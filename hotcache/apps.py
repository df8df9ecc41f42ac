from __future__ import annotations

from django.apps import AppConfig


class HotcacheConfig(AppConfig):
    name = "hotcache"
    verbose_name = "hotcache"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the system checks, install the meter's Redis store, connect the signal receivers."""
        from hotcache import checks, signals  # noqa: F401 - importing checks registers them
        from hotcache.backends import meter_store

        meter_store.install()
        signals.connect_signals()
