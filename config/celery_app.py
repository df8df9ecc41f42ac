"""The host project's Celery app. Settings come from Django's CELERY_* names; hotcache's tasks are @shared_task."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.demo")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
