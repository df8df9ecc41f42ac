"""The django-ratelimit drop-in: same names and arguments, sync and async views."""

import inspect
import uuid

import django_ratelimit
import django_ratelimit.core
import django_ratelimit.decorators
import pytest
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.test import Client, RequestFactory

from hotcache.ratelimit import ALL, UNSAFE, Ratelimited, get_usage, is_ratelimited, ratelimit
from hotcache.testing import reset

rf = RequestFactory()


@pytest.fixture(autouse=True)
def _fresh(settings):
    reset()
    settings.ROOT_URLCONF = "tests.ratelimit.urls"
    yield
    reset()


def ip():
    n = uuid.uuid4().int
    return f"198.19.{n % 250}.{(n >> 8) % 250 + 1}"


def test_signatures_match_django_ratelimit():
    for ours, theirs in (
        (ratelimit, django_ratelimit.decorators.ratelimit),
        (is_ratelimited, django_ratelimit.core.is_ratelimited),
        (get_usage, django_ratelimit.core.get_usage),
    ):
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters)
        assert [p.default for p in inspect.signature(ours).parameters.values()] == [
            p.default for p in inspect.signature(theirs).parameters.values()
        ]
    assert (ALL, UNSAFE) == (django_ratelimit.ALL, django_ratelimit.UNSAFE)
    assert issubclass(Ratelimited, PermissionDenied)


def test_decorator_blocks_with_ratelimited_and_retry_after():
    c, addr = Client(raise_request_exception=False), ip()
    assert [c.get("/deco/", REMOTE_ADDR=addr).status_code for _ in range(3)] == [200, 200, 403]
    view = ratelimit(key="ip", rate="1/m")(lambda request: "ok")
    request = rf.get("/", REMOTE_ADDR=ip())
    assert view(request) == "ok"
    with pytest.raises(Ratelimited) as info:
        view(request)
    assert info.value.retry_after >= 1


def test_block_false_sets_request_limited():
    c, addr = Client(), ip()
    assert [c.get("/soft/", REMOTE_ADDR=addr).content for _ in range(3)] == [b"ok", b"ok", b"limited"]


def test_unsafe_method_filter():
    c, addr = Client(raise_request_exception=False), ip()
    assert [c.get("/unsafe/", REMOTE_ADDR=addr).status_code for _ in range(3)] == [200, 200, 200]
    assert [c.post("/unsafe/", REMOTE_ADDR=addr).status_code for _ in range(2)] == [200, 403]


def test_async_view_is_limited():
    from asgiref.sync import async_to_sync

    from tests.ratelimit.fixtures import async_client

    addr = ip()
    c = async_client(addr, raise_request_exception=False)

    async def run():
        return [(await c.get("/adeco/")).status_code for _ in range(3)]

    assert async_to_sync(run)() == [200, 200, 403]


def test_get_usage_fields_and_peek():
    request = rf.get("/", REMOTE_ADDR=ip())
    group = f"g-{uuid.uuid4().hex}"
    u = get_usage(request, group=group, key="ip", rate="3/m")
    assert {"count", "limit", "should_limit", "time_left"} <= set(u)
    assert (u["count"], u["limit"], u["should_limit"]) == (1, 3, False)  # a peek: would be the first
    for _ in range(3):
        assert not is_ratelimited(request, group=group, key="ip", rate="3/m", increment=True)
    u = get_usage(request, group=group, key="ip", rate="3/m", increment=True)
    # Sliding window: a full current window keeps denying into the next one until its weight decays,
    # so time_left is at most the rest of this window plus (1 - (limit - cost)/limit) of the next: < 2 windows.
    assert u["should_limit"] and u["count"] > u["limit"] and 1 <= u["time_left"] < 120


def test_callable_and_dotted_rates_and_keys():
    def rate(group, request):
        return "1/m"

    def key(group, request):
        return request.META["HTTP_X_TEAM"]

    request = rf.get("/", HTTP_X_TEAM="t-" + uuid.uuid4().hex)
    group = f"g-{uuid.uuid4().hex}"
    assert not is_ratelimited(request, group=group, key=key, rate=rate, increment=True)
    assert is_ratelimited(request, group=group, key=key, rate=rate, increment=True)
    assert not is_ratelimited(request, group=group, key=key, rate=lambda g, r: None, increment=True)
    assert get_usage(request, group=group, key="tests.ratelimit.test_decorator.dotted_key", rate="5/m")["limit"] == 5


def dotted_key(group, request):
    return "dotted"


def test_group_from_function_name_and_errors():
    def view(request):
        return None

    request = rf.get("/", REMOTE_ADDR=ip())
    assert get_usage(request, fn=view, key="ip", rate="5/m")["limit"] == 5
    with pytest.raises(ImproperlyConfigured):
        get_usage(request, key="ip", rate="5/m")
    with pytest.raises(ImproperlyConfigured):
        get_usage(request, group="g", key="nonsense", rate="5/m")
    with pytest.raises(ImproperlyConfigured):
        get_usage(request, group="g", key="ip", rate="5/fortnight")


def test_ratelimit_enable_false_disables(settings):
    settings.RATELIMIT_ENABLE = False
    request = rf.get("/", REMOTE_ADDR=ip())
    assert get_usage(request, group="g", key="ip", rate="0/m") is None


def test_a_blocked_decorated_view_answers_429_with_retry_after_under_the_middleware(settings, caplog):
    """With RateLimitMiddleware installed, @ratelimit's Ratelimited is the same 429 the rules give, not a 403
    page with a logged traceback (the reports count denials as 429s)."""
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "hotcache.middleware.RateLimitMiddleware"]
    c, addr = Client(), ip()
    with caplog.at_level("WARNING", logger="django.request"):
        codes = [c.get("/deco/", REMOTE_ADDR=addr) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    # A sliding window still weighs the previous window: admission can be up to two windows (2 x 60 s) away.
    assert 1 <= int(codes[2]["Retry-After"]) <= 120
    assert codes[2].json()["detail"] == "Too many requests."
    assert not [r for r in caplog.records if r.exc_info]  # no traceback logged for a denial


def test_a_blocked_async_view_answers_429_under_the_middleware(settings):
    from asgiref.sync import async_to_sync

    from tests.ratelimit.fixtures import async_client

    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "hotcache.middleware.RateLimitMiddleware"]
    c = async_client(ip(), raise_request_exception=False)

    async def run():
        return [(await c.get("/adeco/")).status_code for _ in range(3)]

    assert async_to_sync(run)() == [200, 200, 429]
