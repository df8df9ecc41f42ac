from __future__ import annotations

from django.apps import AppConfig


class HotcacheConfig(AppConfig):
    name = "hotcache"
    verbose_name = "hotcache"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from hotcache import checks, signals  # noqa: F401 - registers system checks

        signals.connect_signals()
