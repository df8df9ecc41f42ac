"""Where each µs of the rate-limit path goes: ``python -m config.demo.bench.hotpath_profile [--redis-url URL]``.

Two views, layer by layer from the wire up to the whole middleware, arms interleaved in shuffled rounds:

1. **wall**: p50 of each call against the real Redis (the floor: the script's EVALSHA pre-packed on one open
   connection, read with hiredis; redis-py's pooled ``evalsha``; ``Script``; ``call()``; ``lean_call()``;
   ``evaluate()``; the middleware with 1 and 3 rules, beside a bare view);
2. **python**: the same layers with the wire replaced by a replay of recorded replies (the metered
   connection's ``send_packed_command``/``read_response`` answer from what each packed command got from the real
   server), so what is timed is Python only: p50 and p25 µs per call.

``--cprofile`` adds cProfile's top functions (internal time) of the middleware with the wire replayed. The
machine's load moves every figure; compare layers within one run (docs/operations/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from typing import Any

_RULES = [
    {"name": "per-ip", "rate": "1000000/m", "key": "ip"},
    {"name": "burst", "rate": "1000000/10s", "key": "ip", "path": "/three/"},
    {"name": "daily", "rate": "100000000/d", "key": "ip", "path": "/three/"},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--ops", type=int, default=3000, help="calls per layer (split over the rounds)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--cprofile", action="store_true")
    options = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.demo")
    import django

    django.setup()
    from django.conf import settings
    from django.test.utils import override_settings

    from hotcache.conf import hotcache_settings

    caches = dict(settings.CACHES)
    caches[hotcache_settings.REDIS_ALIAS] = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": options.redis_url}
    prefix = f"hcprof-{os.getpid()}"
    # A meter flush is a round trip of its own: none inside the timed calls.
    hot = {**hotcache_settings.user_settings, "KEY_PREFIX": prefix, "RATELIMIT_RULES": _RULES}
    hot["METER_FLUSH_EVERY"] = 10**9
    with override_settings(CACHES=caches, HOTCACHE=hot):
        try:
            _run(options)
        finally:
            import redis

            client = redis.Redis.from_url(options.redis_url)
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                client.unlink(key)


def _layers(url: str) -> tuple[list[tuple[str, Callable[[int], Any]]], Any]:
    import redis
    from django.http import HttpResponse
    from django.test import RequestFactory

    from hotcache.backends import redis as rb
    from hotcache.ratelimit import core, reset_local_state
    from hotcache.ratelimit.limits import Limit
    from hotcache.ratelimit.middleware import RateLimitMiddleware

    reset_local_state()
    ips = [f"10.0.{i}.7" for i in range(50)]
    limits = [[Limit("per-ip", ip, 1_000_000, 60)] for ip in ips]
    keys = [core.limit_keys(lim[0]) for lim in limits]
    script = core._SCRIPT
    args = [1, 1_000_000, 60_000, 1]
    client = rb.get_client()
    floor = redis.ConnectionPool.from_url(url).make_connection()
    floor.connect()
    floor.send_command("SCRIPT", "LOAD", script.body)
    floor.read_response()
    packed = [floor.pack_command("EVALSHA", script.sha, 1, k[0], *args) for k in keys]

    def floor_op(i: int) -> Any:
        floor.send_packed_command(packed[i % 50], check_health=False)
        return floor.read_response()

    factory = RequestFactory()

    def view(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    middleware = RateLimitMiddleware(view)
    one = [factory.get("/one/", REMOTE_ADDR=ip) for ip in ips]
    three = [factory.get("/three/", REMOTE_ADDR=ip) for ip in ips]
    layers: list[tuple[str, Callable[[int], Any]]] = [
        ("floor: pre-packed EVALSHA, one connection", floor_op),
        ("redis-py Redis.evalsha (pool)", lambda i: client.evalsha(script.sha, 1, keys[i % 50][0], *args)),
        ("Script(pooled client)", lambda i: script(client, keys[i % 50], args)),
        ("backends.redis.call(Script)", lambda i: rb.call("ratelimit", lambda r: script(r, keys[i % 50], args))),
    ]
    lean_call = getattr(rb, "lean_call", None)
    if lean_call is not None:
        layers.append(
            (
                "backends.redis.lean_call(Script)",
                lambda i: lean_call("ratelimit", lambda r: script(r, keys[i % 50], args)),
            )
        )
    layers += [
        ("ratelimit.core.evaluate, 1 rule", lambda i: core.evaluate(limits[i % 50])),
        ("bare view", lambda i: view(one[i % 50])),
        ("RateLimitMiddleware, 1 rule", lambda i: middleware(one[i % 50])),
        ("RateLimitMiddleware, 3 rules", lambda i: middleware(three[i % 50])),
    ]
    return layers, type(client.connection_pool.make_connection())


def _timed(
    layers: list[tuple[str, Callable[[int], Any]]], ops: int, rounds: int, *, per_call: bool
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name, _ in layers}
    clock = time.perf_counter_ns
    per_round = max(1, ops // rounds)
    for r in range(rounds):
        order = layers[:]
        random.Random(r).shuffle(order)
        for name, fn in order:
            if per_call:
                for i in range(per_round):
                    t0 = clock()
                    fn(i)
                    out[name].append((clock() - t0) / 1000)
            else:
                t0 = clock()
                for i in range(per_round):
                    fn(i)
                out[name].append((clock() - t0) / per_round / 1000)
    return out


def _run(options: argparse.Namespace) -> None:
    layers, metered = _layers(options.redis_url)
    for _, fn in layers:  # warm: connections, scripts loaded, rules compiled
        for i in range(100):
            fn(i)
    print(f"load average {os.getloadavg()[0]:.1f}")
    wall = _timed(layers, options.ops, options.rounds, per_call=True)
    print("wall, real Redis: p50 / p90 µs per call")
    for name, _ in layers:
        v = sorted(wall[name])
        print(f"  {name:<44} {v[len(v) // 2]:7.1f} / {v[int(len(v) * 0.9)]:7.1f}")

    replayed = [(n, f) for n, f in layers if not n.startswith("floor")]
    _replay(metered, replayed)
    try:
        python = _timed(replayed, options.ops, options.rounds, per_call=True)
        print("python only, the wire replayed: p50 / p25 µs per call")
        for name, _ in replayed:
            v = sorted(python[name])
            print(f"  {name:<44} {v[len(v) // 2]:7.1f} / {v[len(v) // 4]:7.1f}")
        if options.cprofile:
            import cProfile
            import io
            import pstats

            fn = dict(replayed)["RateLimitMiddleware, 1 rule"]
            profile = cProfile.Profile()
            profile.enable()
            for i in range(options.ops):
                fn(i)
            profile.disable()
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(30)
            print(text.getvalue())
    finally:
        _unreplay(metered)


_ORIGINAL: dict[str, Any] = {}


def _replay(cls: Any, layers: list[tuple[str, Callable[[int], Any]]]) -> None:
    """Record each packed command's reply from the real server, then answer from the record (unknown commands,
    e.g. a new connection's handshake, still go to the server)."""
    from hotcache.backends import redis as rb

    send, read = cls.send_packed_command, cls.read_response
    _ORIGINAL.update(send=send, read=read)
    recorded: dict[bytes, Any] = {}

    def key(command: Any) -> bytes:
        return command if isinstance(command, bytes) else b"".join(command)

    def record_send(self: Any, command: Any, check_health: bool = True) -> None:
        self._hc_replay = key(command)
        send(self, command, check_health)

    def record_read(self: Any, *args: Any, **kwargs: Any) -> Any:
        reply = read(self, *args, **kwargs)
        recorded[self._hc_replay] = reply
        return reply

    cls.send_packed_command, cls.read_response = record_send, record_read
    for _, fn in layers:
        for i in range(100):
            fn(i)

    def replay_send(self: Any, command: Any, check_health: bool = True) -> None:
        rb._wire.sent = False
        self._hc_replay = key(command)
        if self._hc_replay not in recorded:
            send(self, command, check_health)
        rb._wire.sent = True

    def replay_read(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._hc_replay not in recorded:
            return read(self, *args, **kwargs)
        reply = recorded[self._hc_replay]
        if isinstance(reply, Exception):
            raise reply
        return reply

    cls.send_packed_command, cls.read_response = replay_send, replay_read


def _unreplay(cls: Any) -> None:
    if _ORIGINAL:
        cls.send_packed_command, cls.read_response = _ORIGINAL["send"], _ORIGINAL["read"]


if __name__ == "__main__":
    main()
