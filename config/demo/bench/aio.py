"""Async (ASGI) arms beside the sync ones (issue 19): the rate limit with one rule and the warm cached user
(hotcache.sessions + CachedAuthenticationMiddleware), each as a sync stack and as an async stack awaited on one
long-lived event loop (as uvicorn or daphne runs it), with the bare view of each kind as its baseline. Also the
rate limit as it was before the native path (the sync check in a worker thread through ``sync_to_async``), and,
when uvloop is installed (it comes with the test requirements, as with ``uvicorn[standard]``), the async arms again
on a uvloop event loop: what uvicorn runs when it can.

Requests are built with a request factory and handed to the middleware directly, as in the ratelimit and users
groups; the session is attached as SessionMiddleware's process_request would (Django's SessionMiddleware hops to a
worker thread twice per request under ASGI, whatever the engine: its own arm shows it). Each operation is timed
around the handler alone: a sync one around the call, an async one inside its event loop around the await (what
the loop spends on the request, as under a server, without ``run_until_complete``'s start and stop).

Extra column ``thread_hops``: asgiref ``sync_to_async`` calls per request (every one, Django's included), counted
by a spy on SyncToAsync while the group runs. ``summary()`` gives the added p50 of each async arm over its bare
async view, divided by the sync arm's added p50 over the bare sync view (target <= 1.2).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any
from unittest import mock

from asgiref.sync import SyncToAsync, sync_to_async
from django.conf import settings
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpRequest, HttpResponse
from django.test import AsyncRequestFactory, RequestFactory
from django.test.utils import override_settings

from config.demo.bench.runner import Arm, ArmResult
from hotcache.conf import hotcache_settings

__all__ = ["arms", "summary"]

RATE_TITLE = "async: rate limit, 1 rule (sync stack vs ASGI stack)"
USER_TITLE = "async: warm cached user, hotcache.sessions (sync stack vs ASGI stack)"

# (async arm, its bare async view, the sync arm, its bare sync view): the rows summary() compares.
_PAIRS = {
    RATE_TITLE: [
        ("async: hotcache middleware, 1 rule (redis.asyncio)", "async: bare view", "sync: hotcache middleware, 1 rule",
         "sync: bare view"),
        ("async, before: 1 rule, sync check via sync_to_async", "async: bare view", "sync: hotcache middleware, 1 rule",
         "sync: bare view"),
        ("async on uvloop: hotcache middleware, 1 rule (redis.asyncio)", "async on uvloop: bare view",
         "sync: hotcache middleware, 1 rule", "sync: bare view"),
    ],
    USER_TITLE: [
        ("async: CachedAuthenticationMiddleware + auser() (redis.asyncio)", "async: bare view",
         "sync: CachedAuthenticationMiddleware + request.user", "sync: bare view"),
        ("async on uvloop: CachedAuthenticationMiddleware + auser() (redis.asyncio)", "async on uvloop: bare view",
         "sync: CachedAuthenticationMiddleware + request.user", "sync: bare view"),
    ],
}


class _Hops:
    """Counts every SyncToAsync call while installed."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()
        self._patch: Any = None

    def install(self) -> None:
        original = SyncToAsync.__call__
        hops = self

        async def spy(this: Any, *args: Any, **kwargs: Any) -> Any:
            with hops._lock:
                hops.n += 1
            return await original(this, *args, **kwargs)

        self._patch = mock.patch.object(SyncToAsync, "__call__", spy)
        self._patch.start()

    def remove(self) -> None:
        if self._patch is not None:
            self._patch.stop()
            self._patch = None

    def counts(self) -> dict[str, int]:
        return {"thread_hops": self.n}


def _view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


async def _aview(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def _user_view(request: HttpRequest) -> HttpResponse:
    user = request.user
    assert user.is_authenticated, "bench session lost its user"
    return HttpResponse(user.get_username())


async def _auser_view(request: HttpRequest) -> HttpResponse:
    user = await request.auser()  # type: ignore[attr-defined]
    assert user.is_authenticated, "bench session lost its user"
    return HttpResponse(user.get_username())


class _HopRateLimit:
    """RateLimitMiddleware's async path as it was before the native one: the sync check in a worker thread."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        from hotcache.ratelimit.headers import set_headers
        from hotcache.ratelimit.middleware import _check
        from hotcache.ratelimit.state import local_state

        state = local_state()
        decision = await sync_to_async(_check, thread_sensitive=False)(request, state)
        response: HttpResponse = await self.get_response(request)
        set_headers(response, decision, state.settings)
        return response


def arms() -> dict[str, list[Arm]]:
    from django.core.management import call_command

    from config.demo.bench.users import signed_in
    from hotcache import users
    from hotcache.ratelimit import reset_local_state
    from hotcache.ratelimit.middleware import RateLimitMiddleware
    from hotcache.sessions import SessionStore

    call_command("migrate", verbosity=0)
    hot = {
        **hotcache_settings.user_settings,
        "RATELIMIT_RULES": [{"name": "per-ip", "rate": "1000000/m", "key": "ip", "headers": True}],
    }
    override = override_settings(HOTCACHE=hot, SESSION_ENGINE="hotcache.sessions")
    override.enable()
    reset_local_state()
    loop = asyncio.new_event_loop()
    loops = [loop]
    fast_loop = _uvloop()  # uvicorn's loop when uvloop is installed; its arms are left out without it
    if fast_loop is not None:
        loops.append(fast_loop)
    hops = _Hops()
    hops.install()

    def on_loop(
        make: Callable[[int], Coroutine[Any, Any, Any]], on: asyncio.AbstractEventLoop = loop
    ) -> Callable[[int], Any]:
        """One request on the loop, timed inside it (µs): what the loop spends on the request, as under a server."""

        async def timed(i: int) -> float:
            coro = make(i)
            t0 = time.perf_counter()
            await coro
            return (time.perf_counter() - t0) * 1e6

        return lambda i: on.run_until_complete(timed(i))

    rf, arf = RequestFactory(), AsyncRequestFactory()
    ips = [f"10.1.{i}.7" for i in range(50)]

    def req(i: int) -> HttpRequest:
        return rf.get("/one/", REMOTE_ADDR=ips[i % len(ips)])

    def areq(i: int) -> HttpRequest:
        request: HttpRequest = arf.get("/one/")
        request.META["REMOTE_ADDR"] = ips[i % len(ips)]  # an ASGI request's address comes from its scope
        return request

    rate_sync = RateLimitMiddleware(_view)
    rate_async = RateLimitMiddleware(_aview)
    rate_before = _HopRateLimit(_aview)

    user, session = signed_in("hotcache-bench-async", SessionStore)
    key = session.session_key
    auth_sync = users.CachedAuthenticationMiddleware(_user_view)
    auth_async = users.CachedAuthenticationMiddleware(_auser_view)
    with_session_mw = SessionMiddleware(users.CachedAuthenticationMiddleware(_auser_view))
    arf_cookie = AsyncRequestFactory()
    arf_cookie.cookies[settings.SESSION_COOKIE_NAME] = key

    def with_session(request: HttpRequest) -> HttpRequest:
        request.session = SessionStore(key)  # what SessionMiddleware.process_request does
        return request

    def teardown() -> None:
        hops.remove()
        session.delete()
        users.invalidate_user(user.pk)
        for each in loops:
            each.run_until_complete(_close_async_client())
            each.close()
        override.disable()

    def in_sync(handler: Callable[[HttpRequest], Any], make: Callable[[int], HttpRequest]) -> Callable[[int], float]:
        """One request through a sync stack, timed around the handler alone (µs), as on_loop times async ones."""

        def op(i: int) -> float:
            request = make(i)
            t0 = time.perf_counter()
            handler(request)
            return (time.perf_counter() - t0) * 1e6

        return op

    def session_request(i: int) -> HttpRequest:
        return with_session(rf.get("/"))

    def arm(name: str, op: Callable[[int], Any], **extra: Any) -> Arm:
        return Arm(name, op, counts=hops.counts, self_timed=True, **extra)

    rate = [
        arm("sync: bare view", in_sync(_view, req)),
        arm("sync: hotcache middleware, 1 rule", in_sync(rate_sync, req)),
        arm("async: bare view", on_loop(lambda i: _aview(areq(i)))),
        arm("async: hotcache middleware, 1 rule (redis.asyncio)", on_loop(lambda i: rate_async(areq(i)))),
        arm("async, before: 1 rule, sync check via sync_to_async", on_loop(lambda i: rate_before(areq(i)))),
    ]
    if fast_loop is not None:
        rate += [
            arm("async on uvloop: bare view", on_loop(lambda i: _aview(areq(i)), fast_loop)),
            arm("async on uvloop: hotcache middleware, 1 rule (redis.asyncio)",
                on_loop(lambda i: rate_async(areq(i)), fast_loop)),
        ]
    cached_user = [
        arm("sync: bare view", in_sync(_view, session_request)),
        arm("sync: CachedAuthenticationMiddleware + request.user", in_sync(auth_sync, session_request)),
        arm("async: bare view", on_loop(lambda i: _aview(with_session(arf.get("/"))))),
        arm(
            "async: CachedAuthenticationMiddleware + auser() (redis.asyncio)",
            on_loop(lambda i: auth_async(with_session(arf.get("/")))),
        ),
        *(
            [
                arm("async on uvloop: bare view", on_loop(lambda i: _aview(with_session(arf.get("/"))), fast_loop)),
                arm(
                    "async on uvloop: CachedAuthenticationMiddleware + auser() (redis.asyncio)",
                    on_loop(lambda i: auth_async(with_session(arf.get("/"))), fast_loop),
                ),
            ]
            if fast_loop is not None
            else []
        ),
        arm(
            "async: the same under Django's SessionMiddleware",
            on_loop(lambda i: with_session_mw(arf_cookie.get("/"))),
            teardown=teardown,
            note="Django's MiddlewareMixin: process_request and process_response in a worker thread",
        ),
    ]
    return {RATE_TITLE: rate, USER_TITLE: cached_user}


def _uvloop() -> asyncio.AbstractEventLoop | None:
    """A uvloop event loop (what uvicorn runs when uvloop is installed: ``uvicorn[standard]``), or None without it."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop()


async def _close_async_client() -> None:
    from hotcache.backends import aredis

    await aredis.aclose()


def summary(title: str, results: list[ArmResult]) -> dict[str, float]:
    """{async arm: (its p50 - the bare async view's) / (the sync arm's p50 - the bare sync view's)}."""
    p50 = {r.name: r.p50_us for r in results}
    out: dict[str, float] = {}
    for arm, abare, sync, sbare in _PAIRS.get(title, []):
        if arm in p50 and sync in p50:
            added_sync = p50[sync] - p50[sbare]
            out[arm] = round((p50[arm] - p50[abare]) / added_sync, 2) if added_sync > 0 else float("nan")
    return out
