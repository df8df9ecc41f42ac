"""System checks for hotcache's Redis target (E120-E129, W120-W129): REDIS_URL, REDIS_CLUSTER, KEY_BUCKETS (E128);
E123: several nodes in REDIS_URL without REDIS_CLUSTER.

W120 connects to Redis, so it runs only with ``manage.py check --deploy`` (and ``hotcache_check`` reports the
same): a single-server client pointed at one node of a Redis Cluster serves only that node's slots.
W121 reads settings only: CELERY_BROKER_URL names a node of hotcache's Redis Cluster (Celery's Redis transport
cannot use a cluster: MOVED on LLEN, SELECT refused).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from hotcache.checks._common import range_errors
from hotcache.checks._common import setting as _setting
from hotcache.conf import hotcache_settings


@register(Tags.compatibility, Tags.caches)
def check_redis_target(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from hotcache.backends.cluster import startup_urls, url_problems

    errors: list[CheckMessage] = []
    url = hotcache_settings.REDIS_URL
    is_cluster = hotcache_settings.REDIS_CLUSTER
    if not isinstance(is_cluster, bool):
        errors.append(
            Error(
                f"{_setting('REDIS_CLUSTER')}={is_cluster!r} is not True or False.",
                hint="Set it to True when HOTCACHE['REDIS_URL'] names a node of a Redis Cluster, else leave it out.",
                id="hotcache.E120",
            )
        )
        is_cluster = False
    if is_cluster and not url:
        errors.append(
            Error(
                f"{_setting('REDIS_CLUSTER')} is True but {_setting('REDIS_URL')} is not set.",
                hint="Set HOTCACHE['REDIS_URL'] to any node of the cluster (redis://host:port/0 or rediss://...): "
                "django-redis has no cluster client, so the REDIS_ALIAS cache cannot be used for a cluster.",
                id="hotcache.E121",
            )
        )
    elif url and isinstance(url, str) and len(startup_urls(url)) > 1 and not is_cluster:
        errors.append(
            Error(
                f"{_setting('REDIS_URL')} names {len(startup_urls(url))} nodes but {_setting('REDIS_CLUSTER')} is "
                "not True.",
                hint="Several nodes (redis://a:7000,b:7001/0) are startup nodes of a Redis Cluster: set "
                "HOTCACHE['REDIS_CLUSTER'] = True, or name one server.",
                id="hotcache.E123",
            )
        )
    elif url:
        for problem in url_problems(url, cluster=bool(is_cluster)):
            errors.append(
                Error(
                    f"{_setting('REDIS_URL')}: {problem}",
                    hint="See README.md, section Settings (REDIS_URL, REDIS_CLUSTER).",
                    id="hotcache.E122",
                )
            )
    if hotcache_settings.KEY_BUCKETS is not None:
        errors += range_errors(
            "KEY_BUCKETS",
            1,
            1024,
            "is not None or a whole number from 1 to 1024.",
            hint="Leave it out (64 buckets on a cluster, 1 on a single server) or set e.g. 16, 64 or 256; see "
            "docs/operations/redis-cluster.md before changing it on a live deployment.",
            check_id="hotcache.E128",
        )
    return errors


@register(Tags.compatibility, Tags.caches)
def check_celery_broker_on_cluster(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W121: CELERY_BROKER_URL points at a node of the cluster hotcache uses (HOTCACHE['REDIS_URL'] with
    REDIS_CLUSTER). Compared by host and port, with every node the URL lists; other nodes are known only by
    connecting."""
    from hotcache.backends.cluster import startup_urls
    from hotcache.checks.managed_redis import _servers, _urls

    url = hotcache_settings.REDIS_URL
    broker = getattr(settings, "CELERY_BROKER_URL", None)
    if hotcache_settings.REDIS_CLUSTER is not True or not isinstance(url, str) or not isinstance(broker, str):
        return []
    if not _servers(_urls(broker)) & _servers(startup_urls(url)):
        return []
    return [
        Warning(
            f"CELERY_BROKER_URL ({broker.split('@')[-1][:80]}) is a node of the Redis Cluster hotcache uses "
            f"({_setting('REDIS_URL')} with {_setting('REDIS_CLUSTER')}). Celery's Redis transport cannot use a "
            "cluster: its queues' keys live on other nodes (MOVED on LLEN) and it selects a database (SELECT is "
            "refused), so tasks are not delivered.",
            hint="Use a plain Redis (not a cluster node) or RabbitMQ for CELERY_BROKER_URL; see README.md, section "
            "Settings (REDIS_CLUSTER).",
            id="hotcache.W121",
        )
    ]


@register(Tags.caches, deploy=True)
def check_cluster_mode(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W120: the configured Redis says ``cluster_enabled:1`` but hotcache uses a single-server client."""
    from hotcache.backends.redis import cluster_mode_mismatch

    message = cluster_mode_mismatch()
    if message is None:
        return []
    return [
        Warning(
            message,
            hint="Set HOTCACHE['REDIS_CLUSTER'] = True and HOTCACHE['REDIS_URL'] to a node of the cluster: a "
            "single-server client reaches only that node's slots (MOVED everywhere else, every other key "
            "falls back).",
            id="hotcache.W120",
        )
    ]
