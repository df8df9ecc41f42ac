"""hotcache_bench on PostgreSQL instead of SQLite: ``DJANGO_SETTINGS_MODULE=config.settings.bench_postgres``.

The database is ``BENCH_PG_DATABASE`` (default ``test``) at ``BENCH_PG_HOST``:``BENCH_PG_PORT`` (127.0.0.1:5432),
user ``BENCH_PG_USER`` (postgres), trust or ``BENCH_PG_PASSWORD``. Needs ``psycopg`` (requirements/test.txt).
"""

import os

from config.settings.base import *  # noqa: F403

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("BENCH_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("BENCH_PG_PORT", "5432"),
        "NAME": os.environ.get("BENCH_PG_DATABASE", "test"),
        "USER": os.environ.get("BENCH_PG_USER", "postgres"),
        "PASSWORD": os.environ.get("BENCH_PG_PASSWORD", ""),
        "CONN_MAX_AGE": None,  # one open connection, as a production worker keeps
    }
}
