"""Test settings: a real Redis (the machine's, or a throwaway one started here), mongomock for MongoDB.

Each test run uses its own key prefix (HOTCACHE_TEST_PREFIX, inherited by child processes) and its
own Redis database index, and deletes only its own keys when it ends.
"""

import os
import uuid

from fakeredis import FakeRedisConnection

from config.settings.base import *  # noqa: F403
from hotcache.testing import ensure_redis

REDIS_URL = ensure_redis(os.environ.get("HOTCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/9"))
os.environ["HOTCACHE_TEST_REDIS_URL"] = REDIS_URL
TEST_KEY_PREFIX = os.environ.setdefault("HOTCACHE_TEST_PREFIX", f"hct-{uuid.uuid4().hex[:12]}")

CACHES = {
    "default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS_URL},
    # In-process fakeredis for fast unit tests (not for proving Redis semantics).
    "fake": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://fake-redis-tests:6379/0",
        "OPTIONS": {"CONNECTION_POOL_KWARGS": {"connection_class": FakeRedisConnection}},
    },
}

HOTCACHE = {
    "REDIS_ALIAS": "default",
    "KEY_PREFIX": TEST_KEY_PREFIX,
    "MONGO_URL": "mongomock://hotcache_test",
    # Generous for tests: a loaded 2-core machine can stall a reply past the production default (0.05 s),
    # and a timeout sends a call to its fallback, which tests of the Redis path do not expect. Tests of
    # timeouts set their own values.
    "REDIS_SOCKET_TIMEOUT": 2.0,
    "REDIS_CONNECT_TIMEOUT": 2.0,
    # HOTCACHE_TEST_KEY_BUCKETS=8 runs a suite with the spread key layouts on the single server too.
    **({"KEY_BUCKETS": int(_BUCKETS)} if (_BUCKETS := os.environ.get("HOTCACHE_TEST_KEY_BUCKETS")) else {}),
}
# A child process of a HOTCACHE_TEST_REDIS_TARGET=cluster run (tests/analytics/batch_child.py) follows the switch:
# the session's cluster (tests/support/redis_cluster.py sets HOTCACHE_TEST_CLUSTER_URL once it is up), as the
# parent's cluster_redis fixture does. The parent itself reads these settings before the cluster starts.
_CLUSTER = os.environ.get("HOTCACHE_TEST_CLUSTER_URL")
if os.environ.get("HOTCACHE_TEST_REDIS_TARGET") == "cluster" and _CLUSTER:
    HOTCACHE = {**HOTCACHE, "REDIS_URL": _CLUSTER, "REDIS_CLUSTER": True}

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed; not what production uses
DEBUG = False

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_ALWAYS_EAGER = True  # tests that need a real worker use the celery_worker fixture
CELERY_TASK_DEFAULT_QUEUE = f"{TEST_KEY_PREFIX}-celery"
# Broker and result keys live under this run's prefix too, so the run cleans up after itself.
CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": f"{TEST_KEY_PREFIX}:celery:"}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"global_keyprefix": f"{TEST_KEY_PREFIX}:celery:"}
