"""Settings shared by every configuration of the host project.

With no environment, everything runs in-process: SQLite for Django, fakeredis for Redis and
mongomock for MongoDB ("embedded defaults"). Set REDIS_URL and MONGO_URL to use real servers:

    REDIS_URL=redis://127.0.0.1:6379/0 MONGO_URL=mongodb+srv://user:pass@cluster0.example.net/app

With REDIS_CLUSTER=1, REDIS_URL names any node of a Redis Cluster: hotcache builds a cluster client from it
(HOTCACHE['REDIS_URL'], HOTCACHE['REDIS_CLUSTER']). Django's own cache stays in this process (django-redis has
no cluster client) and Celery needs a broker of its own (CELERY_BROKER_URL: a plain Redis or RabbitMQ; Celery's
Redis transport cannot use a cluster), else tasks run eagerly.
"""

import os
from pathlib import Path

from celery.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-hotcache-demo-key-change-me-0123456789abcdef")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "hotcache",
    "config.demo",  # the demo and benchmark commands (host project only; not shipped in the wheel)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH", str(BASE_DIR / "db.sqlite3")),
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis ---------------------------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
REDIS_CLUSTER = os.environ.get("REDIS_CLUSTER", "") == "1"
if REDIS_URL and REDIS_CLUSTER:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
elif REDIS_URL:
    CACHES = {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS_URL}}
else:
    # Embedded default: fakeredis (with Lua) behind the same django-redis backend, in this process.
    from fakeredis import FakeRedisConnection

    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://embedded-fakeredis:6379/0",
            "OPTIONS": {"CONNECTION_POOL_KWARGS": {"connection_class": FakeRedisConnection}},
        }
    }

# --- hotcache ------------------------------------------------------------------------------------
HOTCACHE = {
    "REDIS_ALIAS": "default",
    **({"REDIS_URL": REDIS_URL, "REDIS_CLUSTER": True} if REDIS_URL and REDIS_CLUSTER else {}),
    "MONGO_URL": os.environ.get("MONGO_URL", "mongomock://hotcache"),
    "REDIS_DAILY_COMMAND_BUDGET": int(os.environ.get("HOTCACHE_DAILY_BUDGET", "10000")),
    "REDIS_MONTHLY_COMMAND_BUDGET": int(os.environ.get("HOTCACHE_MONTHLY_BUDGET", "500000")),
    # Analytics batching (docs/analytics.md "Batching"): 0 = one track script per event.
    "ANALYTICS_BATCH_SECONDS": float(os.environ.get("HOTCACHE_ANALYTICS_BATCH_SECONDS", "0")),
}

# --- Celery --------------------------------------------------------------------------------------
_BROKER_REDIS = "" if REDIS_CLUSTER else REDIS_URL  # a cluster cannot be Celery's broker
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", _BROKER_REDIS or "memory://")
CELERY_TASK_ALWAYS_EAGER = not (_BROKER_REDIS or os.environ.get("CELERY_BROKER_URL"))  # embedded: no worker
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_TIME_LIMIT = 15 * 60
CELERY_TASK_ACKS_LATE = True  # a worker killed mid-sync leaves the task for the next one (the syncs are idempotent)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE: dict = {
    # --- API keys ---
    "hotcache-sync-apikey-usage": {"task": "hotcache.tasks.sync_apikey_usage", "schedule": 600.0},

    # --- Analytics ---
    "hotcache-sync-analytics": {
        "task": "hotcache.tasks.sync_analytics",
        "schedule": crontab(minute=5),  # hourly, after ANALYTICS_SYNC_GRACE (300 s) has closed the last hour
    },
    # --- Workbench ---
    # Must not run less often than HOTCACHE['WORKBENCH_PERSIST_INTERVAL'] (check hotcache.E054).
    "hotcache-persist-workbench-sessions": {
        "task": "hotcache.tasks.persist_workbench_sessions",
        "schedule": float(HOTCACHE.get("WORKBENCH_PERSIST_INTERVAL", 300)),
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"hotcache": {"handlers": ["console"], "level": os.environ.get("HOTCACHE_LOG_LEVEL", "WARNING")}},
}
