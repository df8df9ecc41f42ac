"""Helpers for the rate limiting tests: a child-process worker (spawn) and the autouse reset."""

from __future__ import annotations

import os

import pytest


def child_hammer(args):
    """In a spawned process: wait at the barrier, then try `attempts` requests; return how many were admitted.

    ``skew`` shifts this process's clock (hotcache.clock) by that many seconds.
    """
    barrier, ident, limit, window, attempts, skew, out = args
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
    import time

    import django

    django.setup()
    from hotcache.ratelimit import Limit, evaluate
    from hotcache.testing import frozen_clock

    lim = Limit("mp", ident, limit, window)
    with frozen_clock(time.time() + skew):
        evaluate([Limit("warm", ident, 10**6, window)])  # connect before the barrier
        barrier.wait()
        admitted = sum(1 for _ in range(attempts) if evaluate([lim]).allowed)
    out.put(admitted)


MIDDLEWARE = "hotcache.middleware.RateLimitMiddleware"


@pytest.fixture
def ratelimit_middleware(settings):
    """Fresh process-local limiter state, the test URLconf, and RateLimitMiddleware at the end of the stack."""
    from hotcache.testing import reset

    reset()
    settings.ROOT_URLCONF = "tests.ratelimit.urls"
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, MIDDLEWARE]
    yield
    reset()


def async_client(remote, **kwargs):
    """An AsyncClient whose requests come from ``remote`` (the ASGI scope's client; None: a Unix socket).

    AsyncClient turns REMOTE_ADDR=... into a header, so the address has to go into the scope itself.
    """
    from django.test import AsyncClient

    client = AsyncClient(**kwargs)
    base = client._base_scope
    client._base_scope = lambda **request: {**base(**request), "client": None if remote is None else [remote, 0]}
    return client
