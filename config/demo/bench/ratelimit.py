"""Rate limiting arms: a bare Django view, the same view under django-ratelimit (key="ip", django-redis on
the same Redis) and under hotcache's RateLimitMiddleware with 1 and 3 rules (and a deny-cache hit), beside the
wire's floors: the same rate-limit script's EVALSHA for 1 rule and for 3, packed once by redis-py's own packer,
written on one open ``redis.Connection`` and its reply read with hiredis (no pool checkout, no client, no
Django), so the limiter arms read as "x the floor" of the same work (issue 19).

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

__all__ = ["CountingConnection", "Floor", "arms"]

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


class Floor:
    """The raw round trip of one rate-limit decision: EVALSHA of ``sliding_window`` (the script hotcache sends,
    with the same keys and arguments as the 1-rule or the 3-rule arm: ``keys[i]`` holds client i's key per rule,
    ``rules`` each rule's (limit, window in seconds)) pre-packed with ``Connection.pack_command`` once per
    client, written with ``send_packed_command`` on one open connection and read with ``read_response``
    (hiredis when installed). It is what any client must pay per decision; not metered (no hotcache code runs).
    """

    def __init__(self, url: str, keys: list[list[str]], rules: list[tuple[int, int]]) -> None:
        from hotcache.backends.redis import Script

        self.script = Script("sliding_window")
        self.conn = redis.ConnectionPool.from_url(url).make_connection()
        args = [a for limit, window in rules for a in (limit, window * 1000, 1)]
        self.packed = [
            self.conn.pack_command("EVALSHA", self.script.sha, len(client), *client, 1, *args) for client in keys
        ]
        self.parser = type(self.conn._parser).__name__

    def setup(self) -> None:
        self.conn.connect()
        self.conn.send_command("SCRIPT", "LOAD", self.script.body)
        sha = self.conn.read_response()
        if sha not in (self.script.sha, self.script.sha.encode()):
            raise RuntimeError(f"SCRIPT LOAD answered {sha!r}, not the script's SHA {self.script.sha}")

    def op(self, i: int) -> Any:
        self.conn.send_packed_command(self.packed[i % len(self.packed)], check_health=False)
        return self.conn.read_response()

    def teardown(self) -> None:
        self.conn.disconnect()


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

    from hotcache.ratelimit.core import limit_keys
    from hotcache.ratelimit.limits import Limit

    # The floors send what the 1-rule and the 3-rule arms send: the same rates, one key per rule and client.
    one_rule = [(1_000_000, 60)]
    three_rules = [(1_000_000, 60), (1_000_000, 10), (100_000_000, 86400)]
    floors: list[tuple[str, Floor]] = []
    for label, rules in (("", one_rule), (", 3 rules", three_rules)):
        keys = [[limit_keys(Limit(f"floor{n}", ip, limit, window))[0] for n, (limit, window) in enumerate(rules)]
                for ip in ips]
        floor = Floor(location, keys, rules)
        try:
            floor.setup()
        except (redis.ConnectionError, OSError):
            break  # not a real server (the embedded fakeredis default): a raw socket has nothing to reach
        floors.append((label, floor))

    group = [
        Arm("bare Django view", lambda i: _view(req("/one/", i)), counts=counts),
        Arm("django-ratelimit 4.1 key=ip (django-redis)", lambda i: drl_view(req("/one/", i)), counts=counts),
        Arm("hotcache middleware, 1 rule", lambda i: mw(req("/one/", i)), counts=counts),
        Arm("hotcache middleware, 3 rules", lambda i: mw(req("/three/", i)), counts=counts),
        Arm("hotcache, known-denied client (deny cache)", deny_op, counts=counts, teardown=teardown),
    ]
    for label, floor in floors:
        group.append(
            Arm(
                f"floor{label}: raw EVALSHA pre-packed on one connection",
                floor.op,
                teardown=floor.teardown,
                note=f"parser {floor.parser}; not metered",
            )
        )
    return {"ratelimit: one request through a limiter (added latency = arm - bare view)": group}
