"""End-to-end runs (tests/e2e): real processes (gunicorn, Celery worker and beat) against a Redis and a MongoDB
wire server the harness starts and stops. Everything comes from the environment the harness sets."""

import os

from config.settings.base import *  # noqa: F403

DEBUG = False
REDIS_URL = os.environ["REDIS_URL"]
CACHES = {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS_URL}}
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["DJANGO_DB_PATH"],
                         "OPTIONS": {"timeout": 20}}}
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"  # no session writes to SQLite under load
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # the load test logs in a lot

HOTCACHE = {
    "REDIS_ALIAS": "default",
    "KEY_PREFIX": os.environ.get("HOTCACHE_E2E_PREFIX", "hce2e"),
    "MONGO_URL": os.environ["MONGO_URL"],
    "HEALTH_COOLDOWN": float(os.environ.get("HOTCACHE_E2E_COOLDOWN", "2.0")),
    "REDIS_SOCKET_TIMEOUT": 0.1,
    "REDIS_CONNECT_TIMEOUT": 0.1,
    "MONGO_MAX_POOL_SIZE": 5,
    "MONGO_SERVER_SELECTION_TIMEOUT_MS": 1000,
    "MONGO_WAIT_QUEUE_TIMEOUT_MS": 1000,
}

CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_ACKS_LATE = True  # a worker killed mid-task leaves the message for the next worker
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 10}
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# Beat runs every hotcache task often, so a run of a minute or two sees several syncs.
CELERY_BEAT_SCHEDULE = {
    name: {**entry, "schedule": float(os.environ.get("HOTCACHE_E2E_BEAT_SECONDS", "5"))}
    for name, entry in CELERY_BEAT_SCHEDULE.items()  # noqa: F405
}
