"""Rate limiting arms: a bare Django view, the same view under django-ratelimit (key="ip", django-redis on
the same Redis) and under hotcache's RateLimitMiddleware with 1 and 3 rules (and a deny-cache hit).

Requests are built with RequestFactory and passed to the view / decorator / middleware directly (no
URL resolution, no other middleware), so the difference to the bare arm is what each limiter adds.
Redis commands and round trips: hotcache's come from its metered connections; django-ratelimit's
from a cache alias whose django-redis pool uses a connection class that counts the same way
(commands packed and round trips sent), reported as the extra columns drl_cmds / drl_rt.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory
from django.test.utils import override_settings

from config.demo.bench.runner import Arm
from hotcache.conf import hotcache_settings

__all__ = ["CountingConnection", "arms"]

_lock = threading.Lock()
_counts = {"drl_cmds": 0, "drl_rt": 0}


class CountingConnection(redis.Connection):
    """A redis-py connection that counts what django-ratelimit's cache sends (commands, round trips)."""

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        with _lock:
            _counts["drl_cmds"] += 1
            _counts["drl_rt"] += 1
        super().send_command(*args, **kwargs)

    def pack_commands(self, commands: Any) -> Any:
        commands = list(commands)
        with _lock:
            _counts["drl_cmds"] += len(commands)
            _counts["drl_rt"] += 1
        return super().pack_commands(commands)


def _view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def arms() -> dict[str, list[Arm]]:
    from django_ratelimit.decorators import ratelimit as drl_ratelimit

    from hotcache.ratelimit import reset_local_state
    from hotcache.ratelimit.middleware import RateLimitMiddleware

    alias = hotcache_settings.REDIS_ALIAS
    location = settings.CACHES[alias]["LOCATION"]
    caches = dict(settings.CACHES)
    caches["hotcache_bench_drl"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        # A distinct URL (same server and db) so django-redis builds a pool of its own with the counting class.
        "LOCATION": location + ("&" if "?" in location else "?") + "health_check_interval=0",
        "KEY_PREFIX": hotcache_settings.KEY_PREFIX,  # the bench run's own prefix: deleted after the run
        "OPTIONS": {"CONNECTION_POOL_KWARGS": {"connection_class": CountingConnection}},
    }
    hot = {
        **hotcache_settings.user_settings,
        "RATELIMIT_RULES": [
            {"name": "per-ip", "rate": "1000000/m", "key": "ip", "headers": True},
            {"name": "burst", "rate": "1000000/10s", "key": "ip", "path": "/three/", "headers": True},
            {"name": "daily", "rate": "100000000/d", "key": "ip", "path": "/three/", "headers": True},
            {"name": "blocked", "rate": "1/h", "key": "ip", "path": "/deny/", "headers": True},
        ],
    }
    override = override_settings(CACHES=caches, HOTCACHE=hot, RATELIMIT_USE_CACHE="hotcache_bench_drl")
    override.enable()
    reset_local_state()

    rf = RequestFactory()
    ips = [f"10.0.{i}.7" for i in range(50)]  # 50 clients, each making many requests per window
    drl_view = drl_ratelimit(key="ip", rate="1000000/m")(_view)
    mw = RateLimitMiddleware(_view)

    def req(path: str, i: int) -> HttpRequest:
        return rf.get(path, REMOTE_ADDR=ips[i % len(ips)])

    def counts() -> dict[str, int]:
        with _lock:
            return dict(_counts)

    def teardown() -> None:
        override.disable()

    def deny_op(i: int) -> Any:
        return mw(rf.get("/deny/", REMOTE_ADDR="10.255.255.1"))

    return {
        "ratelimit: one request through a limiter (added latency = arm - bare view)": [
            Arm("bare Django view", lambda i: _view(req("/one/", i)), counts=counts),
            Arm("django-ratelimit 4.1 key=ip (django-redis)", lambda i: drl_view(req("/one/", i)), counts=counts),
            Arm("hotcache middleware, 1 rule", lambda i: mw(req("/one/", i)), counts=counts),
            Arm("hotcache middleware, 3 rules", lambda i: mw(req("/three/", i)), counts=counts),
            Arm("hotcache, known-denied client (deny cache)", deny_op, counts=counts, teardown=teardown),
        ]
    }
