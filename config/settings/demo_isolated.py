"""The settings ``manage.py hotcache_demo`` always runs under: the demo's own, whatever settings it was started with.

The command, started under any other settings module (manage.py's default, the tests', a host project's),
runs itself again in a subprocess under this one (config/demo/isolation.py), so the process that sends the
demo's traffic never opens another project's database, cache or logging configuration.

- A throwaway database the demo creates: an in-memory SQLite database of this process, migrated at start and
  gone at exit. The demo's users and its staff account exist only there.
- ALLOWED_HOSTS is the host name of the demo's requests ("testserver", Django's RequestFactory default).
- Redis and MongoDB: embedded (fakeredis, mongomock) unless REDIS_URL / MONGO_URL are set, as for
  manage.py; the demo writes only under the key prefix ``hcdemo`` and the MongoDB database ``hotcache_demo``.
- Logging: Django's request log ("Unauthorized: ...", "Too Many Requests: ..."), the security log and
  hotcache's log go to the demo's collector, not the console; the report summarises them
  (config/demo/logs.py).
"""

import os

from config.demo.isolation import DEMO_DATABASE_NAME
from config.settings.base import *  # noqa: F403

DEBUG = False
ALLOWED_HOSTS = ["testserver"]
# Shared-cache in-memory SQLite (as Django's test runner uses): every connection of this process sees the
# same database, Django never closes it between requests (sqlite3 ignores close() on in-memory databases),
# and it disappears with the process. Nothing on disk, nothing another project owns.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DEMO_DATABASE_NAME}}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # throwaway demo accounts: speed

# One Redis round trip per request at most for hotcache's middleware together (issue 19; docs/demo.md): page views
# batched (0 round trips per request, one write per interval) and sessions on hotcache's Redis path, read with
# the cached user in one round trip (docs/sessions.md, "One round trip per request").
HOTCACHE = {
    **HOTCACHE,  # noqa: F405
    "KEY_PREFIX": "hcdemo",
    "MONGO_DATABASE": "hotcache_demo",
    "ANALYTICS_BATCH_SECONDS": float(os.environ.get("HOTCACHE_ANALYTICS_BATCH_SECONDS", "5")),
}
SESSION_ENGINE = "hotcache.sessions"

# W003 says the in-process MongoDB stand-in loses what it keeps when the process exits: for the demo that is
# the point (its data is throwaway), and the report names the stand-in as the MongoDB it ran on.
SILENCED_SYSTEM_CHECKS = ["hotcache.W003"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"demo": {"class": "config.demo.logs.DemoLogCollector", "level": "WARNING"}},
    "loggers": {
        # propagate False: nothing reaches the root logger's console handler (Django's default config)
        "django.request": {"handlers": ["demo"], "level": "WARNING", "propagate": False},
        "django.security": {"handlers": ["demo"], "level": "WARNING", "propagate": False},
        "django.server": {"handlers": ["demo"], "level": "WARNING", "propagate": False},
        "hotcache": {"handlers": ["demo"], "level": "WARNING", "propagate": False},
    },
}
