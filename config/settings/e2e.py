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

if os.environ.get("HOTCACHE_E2E_CLUSTER_URL"):
    # hotcache on a Redis Cluster; Django's cache and the Celery broker stay on the plain REDIS_URL (neither has a
    # cluster client), as docs/operations/redis-cluster.md tells users to deploy.
    HOTCACHE.update(REDIS_URL=os.environ["HOTCACHE_E2E_CLUSTER_URL"], REDIS_CLUSTER=True)

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

# The demo URLconf has the feature endpoints the load generator drives.
ROOT_URLCONF = "config.demo.urls"
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "hotcache.middleware.CachedAuthenticationMiddleware",
    "hotcache.middleware.RateLimitMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
HOTCACHE.update(
    RATELIMIT_RULES=[
        # The load generator's "greedy" clients exceed this; its "polite" ones stay under half of it.
        {"name": "e2e-api", "rate": "40/5s", "key": "header:x-client", "path": "/rl/api/", "headers": True},
    ],
    # Short timings so a run of a minute sees abandoned sessions persisted and syncs recovered.
    WORKBENCH_PERSIST_IDLE_AFTER=4,
    WORKBENCH_PERSIST_INTERVAL=5,
    WORKBENCH_CLAIM_TIMEOUT=10,
    ANALYTICS_SYNC_LOCK_TIMEOUT=5,
    ANALYTICS_SYNC_GRACE=0,
)
# The worker loads the harness's hook (kill the worker mid-sync on cue) only in end-to-end runs.
CELERY_IMPORTS = ["tests.e2e.worker_hooks"] if os.environ.get("HOTCACHE_E2E_WORKDIR") else []
