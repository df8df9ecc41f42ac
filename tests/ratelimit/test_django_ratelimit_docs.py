"""django-ratelimit 4.1's documentation, section by section (docs/*.rst of its 4.1.0 tag), against hotcache.

Each test is one documented behaviour, asserted on hotcache's drop-in (real Redis). Where hotcache differs on
purpose the test asserts hotcache's documented answer and says so; docs/ratelimit.md ("Differences from
django-ratelimit, and why") gives the reasons. This module is also the test URLconf (handler403_urls.py has
the handler403).
"""

from __future__ import annotations

import hashlib
import importlib
import uuid
from types import SimpleNamespace

import django_ratelimit
import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import HttpResponse, JsonResponse
from django.test import Client, RequestFactory, override_settings
from django.urls import path
from django.utils.decorators import method_decorator
from django.views.generic import View

import hotcache.ratelimit
from hotcache.clientip import client_ip
from hotcache.ratelimit import ALL, UNSAFE, Ratelimited, get_usage, is_ratelimited, key_value, ratelimit
from hotcache.testing import count_redis, reset

rf = RequestFactory()
MIDDLEWARE = "hotcache.ratelimit.middleware.RatelimitMiddleware"  # django_ratelimit.middleware.RatelimitMiddleware


@pytest.fixture(autouse=True)
def _fresh(settings):
    reset()
    settings.ROOT_URLCONF = __name__
    yield
    reset()


def ip() -> str:
    n = uuid.uuid4().int
    return f"198.18.{n % 250}.{(n >> 8) % 250 + 1}"


def grp() -> str:
    return f"docs-{uuid.uuid4().hex[:12]}"


def tag() -> str:
    return uuid.uuid4().hex[:10]


def ok(request, *args, **kwargs):
    return HttpResponse("ok")


def calls(view, request, n):
    """``n`` calls of ``view``: "ok", or "blocked" when it raised Ratelimited."""
    out = []
    for _ in range(n):
        try:
            out.append(view(request).content.decode())
        except Ratelimited:
            out.append("blocked")
    return out


# --- Views for the URLconf tests -------------------------------------------------------------------------------


@ratelimit(key="ip", rate="1/m")
def limited_view(request):
    return HttpResponse("ok")


def forbidden_view(request):
    raise PermissionDenied("not yours")


def ratelimited_error(request, exception):
    """The cookbook's RATELIMIT_VIEW (docs/cookbook/429.rst)."""
    assert isinstance(exception, Ratelimited)
    return JsonResponse({"error": "ratelimited"}, status=429)


def ratelimited_error_with_retry_after(request, exception):
    response = JsonResponse({"error": "ratelimited"}, status=429)
    response["Retry-After"] = "999"
    return response


class MyView(View):
    @method_decorator(ratelimit(key="ip", rate="1/m", method="GET"))
    def get(self, request):
        return HttpResponse("get")

    @method_decorator(ratelimit(key="ip", rate="1/m", method="POST"))
    def post(self, request):
        return HttpResponse("post")


@method_decorator(ratelimit(key="ip", rate="1/m", method="GET"), name="get")
class MyOtherView(View):
    def get(self, request):
        return HttpResponse("get")


class PlainView(View):
    def get(self, request):
        return HttpResponse("get")


urlpatterns = [
    path("limited/", limited_view),
    path("forbidden/", forbidden_view),
    path("cbv/", MyView.as_view()),
    path("cbv-other/", MyOtherView.as_view()),
    path("cbv-wrapped/", ratelimit(key="ip", method="GET", rate="1/m")(PlainView.as_view())),
]


# --- index / usage.rst: the public names ----------------------------------------------------------------------

# (django-ratelimit module, name, the hotcache module that holds it)
DOCUMENTED_NAMES = [
    ("django_ratelimit", "ALL", "hotcache.ratelimit"),
    ("django_ratelimit", "UNSAFE", "hotcache.ratelimit"),
    ("django_ratelimit.decorators", "ratelimit", "hotcache.ratelimit.decorators"),
    ("django_ratelimit.core", "get_usage", "hotcache.ratelimit.usage"),
    ("django_ratelimit.core", "is_ratelimited", "hotcache.ratelimit.usage"),
    ("django_ratelimit.exceptions", "Ratelimited", "hotcache.ratelimit.exceptions"),
    ("django_ratelimit.middleware", "RatelimitMiddleware", "hotcache.ratelimit.middleware"),
]


@pytest.mark.parametrize(("theirs", "name", "ours"), DOCUMENTED_NAMES)
def test_every_documented_name_has_a_hotcache_home(theirs, name, ours):
    """Each documented import has a twin: change the module path, keep the name."""
    assert hasattr(importlib.import_module(theirs), name)
    found = getattr(importlib.import_module(ours), name)
    if hasattr(hotcache.ratelimit, name):  # the package re-exports the same object
        assert getattr(hotcache.ratelimit, name) is found


def test_method_sentinels_are_on_the_package_and_on_each_function():
    """usage.rst, HTTP Methods: ALL and UNSAFE are "accessible from the ratelimit decorator or the
    is_ratelimited helper, as well as on the root module" (get_usage has them too)."""
    from django_ratelimit.core import get_usage as their_get_usage
    from django_ratelimit.core import is_ratelimited as their_is_ratelimited
    from django_ratelimit.decorators import ratelimit as their_ratelimit

    assert (ALL, UNSAFE) == (django_ratelimit.ALL, django_ratelimit.UNSAFE)
    for ours, theirs in (
        (ratelimit, their_ratelimit),
        (is_ratelimited, their_is_ratelimited),
        (get_usage, their_get_usage),
    ):
        assert ours.ALL == theirs.ALL == ALL
        assert ours.UNSAFE == theirs.UNSAFE == UNSAFE
    assert sorted(UNSAFE) == ["DELETE", "PATCH", "POST", "PUT"]


# --- usage.rst: the decorator --------------------------------------------------------------------------------


def test_group_defaults_to_the_dotted_name_of_the_view():
    """group: "Defaults to the dotted name of the view": get_usage(fn=view) reads the decorator's counter."""

    def view(request):
        return HttpResponse("ok")

    decorated = ratelimit(key="ip", rate="2/m")(view)
    request = rf.get("/", REMOTE_ADDR=ip())
    assert calls(decorated, request, 2) == ["ok", "ok"]
    usage = get_usage(request, fn=view, key="ip", rate="2/m")
    assert usage["should_limit"] and usage["count"] == 3  # a peek: with this request it would be the 3rd


@pytest.mark.parametrize(
    ("rate", "limit", "window"), [("5/s", 5, 1), ("5/m", 5, 60), ("4/h", 4, 3600), ("1/d", 1, 86400)]
)
def test_rate_units_are_seconds_minutes_hours_days(rate, limit, window):
    """rate: "Valid units are s, m, h, d"."""
    usage = get_usage(rf.get("/", REMOTE_ADDR=ip()), group=grp(), key="ip", rate=rate)
    result = usage["decision"].results[0]
    assert (usage["limit"], result.window) == (limit, window)


@pytest.mark.parametrize("rate", ["100/5m", "100/300s", "100/300"])
def test_a_number_of_units_and_seconds_when_the_unit_is_left_out(rate):
    """rates.rst: "100/5m", "100/300s" and "100/300" all mean one hundred requests per five minutes."""
    usage = get_usage(rf.get("/", REMOTE_ADDR=ip()), group=grp(), key="ip", rate=rate)
    assert (usage["limit"], usage["decision"].results[0].window) == (100, 300)


def test_a_rate_of_zero_disallows_all_requests():
    """rates.rst: "0/s will prevent any requests to the endpoint"; callables may return (0, 60)."""
    view = ratelimit(key="ip", rate="0/s")(ok)
    assert calls(view, rf.get("/", REMOTE_ADDR=ip()), 2) == ["blocked", "blocked"]
    view = ratelimit(key="ip", rate=lambda g, r: (0, 60))(ok)
    assert calls(view, rf.get("/", REMOTE_ADDR=ip()), 1) == ["blocked"]


def test_a_rate_of_none_allows_all_requests_and_tracks_nothing():
    """rates.rst: None "indicates there is no limit. Usage will not be tracked"."""
    view = ratelimit(key="ip", rate=None)(ok)
    request = rf.get("/", REMOTE_ADDR=ip())
    with count_redis() as counted:
        assert calls(view, request, 5) == ["ok"] * 5
        assert get_usage(request, group=grp(), key="ip", rate=None) is None
    assert counted.commands == 0


@pytest.mark.parametrize("method", ["POST", ["POST"], ("POST", "PUT")])
def test_method_limits_only_the_named_methods(method):
    """method: "May be a string, a list/tuple of strings": other methods are neither limited nor counted."""
    view = ratelimit(key="ip", rate="1/m", method=method)(ok)
    addr = ip()
    assert calls(view, rf.get("/", REMOTE_ADDR=addr), 3) == ["ok"] * 3
    assert calls(view, rf.post("/", REMOTE_ADDR=addr), 2) == ["ok", "blocked"]


def test_method_all_and_unsafe():
    """ratelimit.ALL applies to all methods; ratelimit.UNSAFE to POST, PUT, PATCH and DELETE."""
    addr = ip()
    every = ratelimit(key="ip", rate="1/m", method=ratelimit.ALL)(ok)
    assert calls(every, rf.get("/", REMOTE_ADDR=addr), 2) == ["ok", "blocked"]
    unsafe = ratelimit(key="ip", rate="4/m", method=ratelimit.UNSAFE)(ok)
    for make in (rf.get, rf.head, rf.options):
        assert calls(unsafe, make("/", REMOTE_ADDR=addr), 2) == ["ok", "ok"]
    for make in (rf.post, rf.put, rf.patch, rf.delete):
        assert calls(unsafe, make("/", REMOTE_ADDR=addr), 1) == ["ok"]
    assert calls(unsafe, rf.post("/", REMOTE_ADDR=addr), 1) == ["blocked"]


def test_block_true_raises_ratelimited():
    """block=True: "If the same IP makes >5 reqs/min, will raise Ratelimited"."""
    view = ratelimit(key="ip", rate="5/m", block=True)(ok)
    assert calls(view, rf.get("/", REMOTE_ADDR=ip()), 6) == ["ok"] * 5 + ["blocked"]


def test_block_false_annotates_request_limited_and_runs_the_view():
    """block=False: the view runs and request.limited says whether the request was over the limit."""

    @ratelimit(key="ip", rate="5/m", block=False)
    def myview(request):
        return HttpResponse("limited" if getattr(request, "limited", False) else "free")

    request = rf.get("/", REMOTE_ADDR=ip())
    assert [myview(request).content for _ in range(6)] == [b"free"] * 5 + [b"limited"]


def test_request_limited_stays_true_through_stacked_decorators():
    """The decorator keeps an earlier decorator's request.limited (old_limited or this one)."""
    addr = ip()

    @ratelimit(key="ip", rate="100/m", block=False)
    @ratelimit(key="ip", rate="0/m", block=False, group=grp())
    def view(request):
        return HttpResponse("limited" if request.limited else "free")

    assert view(rf.get("/", REMOTE_ADDR=addr)).content == b"limited"


def test_post_username_limits_the_same_username_whatever_the_address():
    """The login example: key='post:username', rate='5/m', method=['GET', 'POST'], block=False."""

    @ratelimit(key="post:username", rate="5/m", method=["GET", "POST"], block=False)
    def login(request):
        return HttpResponse("limited" if getattr(request, "limited", False) else "free")

    user = f"alice-{tag()}"
    seen = [login(rf.post("/", {"username": user}, REMOTE_ADDR=ip())).content for _ in range(6)]
    assert seen == [b"free"] * 5 + [b"limited"]
    assert login(rf.post("/", {"username": f"bob-{tag()}"}, REMOTE_ADDR=ip())).content == b"free"


def test_stacked_decorators_are_separate_keys():
    """ "Use multiple keys by stacking decorators": post:username and post:tenant each limit on their own."""

    @ratelimit(key="post:username", rate="2/m")
    @ratelimit(key="post:tenant", rate="2/m")
    def login(request):
        return HttpResponse("ok")

    user, tenants = f"u-{tag()}", [f"t-{tag()}" for _ in range(3)]
    out = []
    for tenant in tenants:
        try:
            out.append(login(rf.post("/", {"username": user, "tenant": tenant})).content)
        except Ratelimited:
            out.append(b"blocked")
    assert out == [b"ok", b"ok", b"blocked"]  # the username's limit, though each tenant was new


def test_get_and_post_keys_of_one_view_combine_into_one_limit():
    """The search example: get:q and post:q "combine to form one rate limit: the same search query can only
    be tried 5 times a minute, regardless of the request method"."""

    @ratelimit(key="get:q", rate="5/m")
    @ratelimit(key="post:q", rate="5/m")
    def search(request):
        return HttpResponse("ok")

    query = f"q-{tag()}"
    requests = [rf.get("/", {"q": query}), rf.post("/", {"q": query})] * 3
    out = []
    for request in requests:
        try:
            out.append(search(request).content)
        except Ratelimited:
            out.append(b"blocked")
    assert out == [b"ok"] * 5 + [b"blocked"]


def test_a_callable_rate_can_limit_only_anonymous_requests():
    """The skipif1 example: get_rate = lambda g, r: None if r.user.is_authenticated else '100/h' (here 1/h)."""
    view = ratelimit(key="ip", rate=lambda g, r: None if r.user.is_authenticated else "1/h")(ok)
    addr = ip()
    member = rf.get("/", REMOTE_ADDR=addr)
    member.user = SimpleNamespace(is_authenticated=True, pk=1)
    anonymous = rf.get("/", REMOTE_ADDR=addr)
    anonymous.user = AnonymousUser()
    assert calls(view, anonymous, 2) == ["ok", "blocked"]
    assert calls(view, member, 3) == ["ok"] * 3


def test_stacked_rates_on_one_key_are_a_burst_and_a_sustained_limit():
    """The burst_limit example: two rates on user_or_ip count apart, each with its own counter, even when
    their windows are equal."""
    request = rf.get("/", REMOTE_ADDR=ip())
    burst = ratelimit(key="user_or_ip", rate="3/m")(ratelimit(key="user_or_ip", rate="5/h")(ok))
    assert calls(burst, request, 4) == ["ok"] * 3 + ["blocked"]
    same_window = ratelimit(key="user_or_ip", rate="2/m")(ratelimit(key="user_or_ip", rate="3/m")(ok))
    assert calls(same_window, rf.get("/", REMOTE_ADDR=ip()), 3) == ["ok", "ok", "blocked"]


def test_a_group_shares_one_counter_between_views():
    """expensive_view_a and expensive_view_b with group='expensive' share a counter."""
    group = grp()
    view_a = ratelimit(group=group, key="user_or_ip", rate="2/h")(ok)
    view_b = ratelimit(group=group, key="user_or_ip", rate="2/h")(ok)
    request = rf.get("/", REMOTE_ADDR=ip())
    assert calls(view_a, request, 1) + calls(view_b, request, 1) + calls(view_a, request, 1) == ["ok", "ok", "blocked"]


def test_a_header_key_reads_the_header_in_meta_form():
    """keys.rst: header:x-cluster-client-ip reads request.META['HTTP_X_CLUSTER_CLIENT_IP']."""
    view = ratelimit(key="header:x-cluster-client-ip", rate="1/m")(ok)
    value = f"203.0.113.{uuid.uuid4().int % 250 + 1}-{tag()}"
    assert calls(view, rf.get("/", HTTP_X_CLUSTER_CLIENT_IP=value, REMOTE_ADDR=ip()), 1) == ["ok"]
    assert calls(view, rf.get("/", HTTP_X_CLUSTER_CLIENT_IP=value, REMOTE_ADDR=ip()), 1) == ["blocked"]


def test_a_key_function_with_a_fallback():
    """key=lambda g, r: r.META.get('HTTP_X_CLUSTER_CLIENT_IP', r.META['REMOTE_ADDR'])."""
    view = ratelimit(key=lambda g, r: r.META.get("HTTP_X_CLUSTER_CLIENT_IP", r.META["REMOTE_ADDR"]), rate="1/m")(ok)
    addr = ip()
    assert calls(view, rf.get("/", REMOTE_ADDR=addr), 1) == ["ok"]
    assert calls(view, rf.get("/", HTTP_X_CLUSTER_CLIENT_IP=addr, REMOTE_ADDR=ip()), 1) == ["blocked"]


# --- usage.rst: class-based views ----------------------------------------------------------------------------


def test_method_decorator_on_class_based_views_and_wrapping_as_view():
    """@method_decorator on a method, on the class with name='get', and ratelimit(...)(View.as_view())."""
    c = Client(raise_request_exception=False)
    for url in ("/cbv/", "/cbv-other/", "/cbv-wrapped/"):
        addr = ip()
        assert [c.get(url, REMOTE_ADDR=addr).status_code for _ in range(2)] == [200, 403]


def test_methods_of_a_class_based_view_are_limited_separately():
    """ "Unless given an explicit group argument, different methods of a class-based view will be limited
    separately"."""
    c, addr = Client(raise_request_exception=False), ip()
    assert c.get("/cbv/", REMOTE_ADDR=addr).status_code == 200
    assert c.post("/cbv/", REMOTE_ADDR=addr).status_code == 200
    assert c.get("/cbv/", REMOTE_ADDR=addr).status_code == 403


# --- usage.rst: core methods ---------------------------------------------------------------------------------


def test_get_usage_and_is_ratelimited_need_group_or_fn():
    """ "get_usage and is_ratelimited require either group= or fn= to be passed ... and will throw"."""
    request = rf.get("/", REMOTE_ADDR=ip())
    with pytest.raises(ImproperlyConfigured):
        get_usage(request, key="ip", rate="1/m")
    with pytest.raises(ImproperlyConfigured):
        is_ratelimited(request, key="ip", rate="1/m")


def test_get_usage_returns_count_limit_time_left_and_should_limit():
    """get_usage returns "a dict including the current count, limit, time left in the window, and whether this
    request should be limited"."""
    request, group = rf.get("/", REMOTE_ADDR=ip()), grp()
    first = get_usage(request, group=group, key="ip", rate="2/m", increment=True)
    assert (first["count"], first["limit"], first["should_limit"]) == (1, 2, False)
    assert 1 <= first["time_left"] <= 60
    get_usage(request, group=group, key="ip", rate="2/m", increment=True)
    third = get_usage(request, group=group, key="ip", rate="2/m", increment=True)
    assert third["should_limit"] and third["count"] == 3 and third["time_left"] >= 1


def test_get_usage_returns_none_when_rate_limiting_is_not_active():
    """ "Either returns None, indicating that ratelimiting was not active for this request (for some reason)":
    the method does not match, the rate is None."""
    request = rf.get("/", REMOTE_ADDR=ip())
    assert get_usage(request, group=grp(), key="ip", rate="1/m", method="POST") is None
    assert get_usage(request, group=grp(), key="ip", rate=None) is None
    assert is_ratelimited(request, group=grp(), key="ip", rate="0/m", method="POST") is False


def test_get_usage_method_none_means_every_method():
    """get_usage's method: "a string, a list/tuple, or None for all methods"."""
    usage = get_usage(rf.delete("/", REMOTE_ADDR=ip()), group=grp(), key="ip", rate="1/m", method=None)
    assert usage is not None and usage["limit"] == 1


def test_increment_false_only_checks():
    """increment: "Whether to increment the count or just check": a check moves no counter."""
    request, group = rf.get("/", REMOTE_ADDR=ip()), grp()
    for _ in range(5):
        assert not is_ratelimited(request, group=group, key="ip", rate="1/m", increment=False)
    assert not is_ratelimited(request, group=group, key="ip", rate="1/m", increment=True)
    assert is_ratelimited(request, group=group, key="ip", rate="1/m", increment=True)


def test_a_check_counts_the_request_it_checks():
    """Difference (documented): with increment=False, count includes the request being checked and
    should_limit says whether it would be refused. django-ratelimit reports the stored count (2 of 2: not
    limited), so a check-then-count-failures login loop admits one attempt more than the rate."""
    request, group = rf.post("/", REMOTE_ADDR=ip()), grp()
    for _ in range(2):
        is_ratelimited(request, group=group, key="ip", rate="2/m", increment=True)
    usage = get_usage(request, group=group, key="ip", rate="2/m", increment=False)
    assert (usage["count"], usage["should_limit"]) == (3, True)


def test_a_refused_request_is_not_counted():
    """Difference (documented): django-ratelimit counts every call; hotcache counts only admitted requests."""
    request, group = rf.get("/", REMOTE_ADDR=ip()), grp()
    for _ in range(6):
        is_ratelimited(request, group=group, key="ip", rate="2/m", increment=True)
    assert get_usage(request, group=group, key="ip", rate="2/m")["count"] == 3  # 2 admitted + this one


def test_is_ratelimited_is_get_usages_should_limit():
    """ "is_ratelimited is a thin wrapper around get_usage"."""
    request, group = rf.get("/", REMOTE_ADDR=ip()), grp()
    for _ in range(3):
        expected = get_usage(request, group=group, key="ip", rate="1/m")["should_limit"]
        assert is_ratelimited(request, group=group, key="ip", rate="1/m", increment=True) is expected


# --- usage.rst: exceptions and middleware; cookbook/429.rst ------------------------------------------------


def test_ratelimited_is_permission_denied_so_django_answers_403():
    """Exceptions: Ratelimited subclasses PermissionDenied; without the middleware Django answers 403."""
    assert issubclass(Ratelimited, PermissionDenied)
    c, addr = Client(raise_request_exception=False), ip()
    assert [c.get("/limited/", REMOTE_ADDR=addr).status_code for _ in range(2)] == [200, 403]


def test_a_handler403_can_answer_ratelimited_with_429(settings):
    """Exceptions: "If you are setting handler403 ... you can catch this exception" (DEBUG off)."""
    settings.DEBUG = False
    settings.ROOT_URLCONF = "tests.ratelimit.handler403_urls"
    c, addr = Client(raise_request_exception=False), ip()
    c.get("/limited/", REMOTE_ADDR=addr)
    response = c.get("/limited/", REMOTE_ADDR=addr)
    assert (response.status_code, response.content) == (429, b"Sorry you are blocked")
    assert c.get("/forbidden/", REMOTE_ADDR=addr).status_code == 403


def _no_traceback(caplog):
    return not [r for r in caplog.records if r.name == "django.request" and r.exc_info]


def test_ratelimit_view_answers_through_the_middleware(settings, caplog):
    """Middleware + RATELIMIT_VIEW: the view gets (request, exception) and its answer is sent (the cookbook's
    429 JSON). hotcache adds Retry-After and the RateLimit headers, and no traceback is logged."""
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, MIDDLEWARE]
    settings.RATELIMIT_VIEW = f"{__name__}.ratelimited_error"
    c, addr = Client(), ip()
    with caplog.at_level("INFO", logger="django.request"):
        codes = [c.get("/limited/", REMOTE_ADDR=addr) for _ in range(2)]
    assert [r.status_code for r in codes] == [200, 429]
    denied = codes[1]
    assert denied.json() == {"error": "ratelimited"}
    assert 1 <= int(denied["Retry-After"]) <= 120
    assert denied["RateLimit-Policy"] == f'"{__name__}.limited_view";q=1;w=60'
    assert denied["RateLimit"].startswith(f'"{__name__}.limited_view";r=0;t=')
    assert _no_traceback(caplog)


def test_ratelimit_view_answers_for_an_async_view_too(settings):
    from asgiref.sync import async_to_sync

    from tests.ratelimit.fixtures import async_client

    settings.ROOT_URLCONF = "tests.ratelimit.urls"  # /adeco/: an async view with @ratelimit(key="ip", rate="2/m")
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, MIDDLEWARE]
    settings.RATELIMIT_VIEW = f"{__name__}.ratelimited_error"
    c = async_client(ip())

    async def run():
        return [await c.get("/adeco/") for _ in range(3)]

    responses = async_to_sync(run)()
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[2].json() == {"error": "ratelimited"} and int(responses[2]["Retry-After"]) >= 1


def test_ratelimit_view_keeps_its_own_retry_after(settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, MIDDLEWARE]
    settings.RATELIMIT_VIEW = f"{__name__}.ratelimited_error_with_retry_after"
    c, addr = Client(), ip()
    c.get("/limited/", REMOTE_ADDR=addr)
    assert c.get("/limited/", REMOTE_ADDR=addr)["Retry-After"] == "999"


def test_without_ratelimit_view_the_middleware_answers_429(settings, caplog):
    """Difference (documented): django-ratelimit's middleware needs RATELIMIT_VIEW ("Has no default"); hotcache's
    answers its own 429 with Retry-After and the RateLimit headers, and logs no traceback."""
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, MIDDLEWARE]
    c, addr = Client(), ip()
    with caplog.at_level("INFO", logger="django.request"):
        codes = [c.get("/limited/", REMOTE_ADDR=addr) for _ in range(2)]
    assert [r.status_code for r in codes] == [200, 429]
    assert codes[1].json()["detail"] == "Too many requests."
    assert int(codes[1]["Retry-After"]) >= 1 and "RateLimit" in codes[1]
    assert _no_traceback(caplog)


def test_the_middleware_leaves_other_permission_denied_alone(settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, MIDDLEWARE]
    settings.RATELIMIT_VIEW = f"{__name__}.ratelimited_error"
    assert Client(raise_request_exception=False).get("/forbidden/").status_code == 403


# --- settings.rst --------------------------------------------------------------------------------------------


def test_ratelimit_enable_false_disables_rate_limiting():
    """RATELIMIT_ENABLE: "Set to False to disable rate-limiting across the board", e.g. with override_settings."""
    view = ratelimit(key="ip", rate="0/m")(ok)
    request = rf.get("/", REMOTE_ADDR=ip())
    with override_settings(RATELIMIT_ENABLE=False):
        assert calls(view, request, 3) == ["ok"] * 3
        assert get_usage(request, group=grp(), key="ip", rate="0/m") is None
    assert calls(view, request, 1) == ["blocked"]


def test_ratelimit_use_cache_is_not_used_and_the_check_says_so(settings):
    """Difference (documented): counters live on HOTCACHE['REDIS_ALIAS']'s Redis; RATELIMIT_USE_CACHE is not
    read (a name missing from CACHES breaks nothing) and manage.py check warns (W013)."""
    from hotcache.checks.ratelimit import check_django_ratelimit_settings

    settings.RATELIMIT_USE_CACHE = "no-such-cache"
    view = ratelimit(key="ip", rate="1/m")(ok)
    assert calls(view, rf.get("/", REMOTE_ADDR=ip()), 2) == ["ok", "blocked"]
    assert [m.id for m in check_django_ratelimit_settings()] == ["hotcache.W013"]


def test_ratelimit_fail_open_true_allows_requests_when_redis_fails(settings, redis_down):
    """RATELIMIT_FAIL_OPEN: "Whether to allow requests when the cache backend fails" (get_usage: None)."""
    settings.RATELIMIT_FAIL_OPEN = True
    view = ratelimit(key="ip", rate="1/m")(ok)
    request = rf.get("/", REMOTE_ADDR=ip())
    assert calls(view, request, 3) == ["ok"] * 3
    assert get_usage(request, group=grp(), key="ip", rate="1/m", increment=True) is None


def test_ratelimit_fail_open_false_refuses_requests_when_redis_fails(settings, redis_down):
    """RATELIMIT_FAIL_OPEN = False: refused (hotcache: Retry-After = HEALTH_COOLDOWN, not time_left -1)."""
    settings.RATELIMIT_FAIL_OPEN = False
    view = ratelimit(key="ip", rate="100/m")(ok)
    request = rf.get("/", REMOTE_ADDR=ip())
    assert calls(view, request, 1) == ["blocked"]
    usage = get_usage(request, group=grp(), key="ip", rate="100/m", increment=True)
    assert usage["should_limit"] and usage["time_left"] >= 1


def test_without_ratelimit_fail_open_an_outage_limits_in_the_process(redis_down):
    """Difference (documented): unset, django-ratelimit fails closed; hotcache applies RATELIMIT_DEFAULT_POLICY
    ('local': the same limit, counted in this process)."""
    view = ratelimit(key="ip", rate="2/m")(ok)
    assert calls(view, rf.get("/", REMOTE_ADDR=ip()), 3) == ["ok", "ok", "blocked"]


def test_ratelimit_exception_class_class_or_dotted_path(settings):
    """RATELIMIT_EXCEPTION_CLASS: "A custom exception class, or a dotted path to" one, raised when blocking."""
    view = ratelimit(key="ip", rate="0/m")(ok)
    for value in (LookupError, "builtins.LookupError"):
        settings.RATELIMIT_EXCEPTION_CLASS = value
        with pytest.raises(LookupError):
            view(rf.get("/", REMOTE_ADDR=ip()))


def test_ratelimit_ip_meta_key_none_is_remote_addr(settings):
    """RATELIMIT_IP_META_KEY None: "Use request.META['REMOTE_ADDR']"."""
    settings.RATELIMIT_IP_META_KEY = None
    assert key_value("ip", rf.get("/", REMOTE_ADDR="203.0.113.9", HTTP_X_REAL_IP="192.0.2.1"), "g") == "203.0.113.9"


def client_ip_from_header(request):
    return request.META["HTTP_X_CLIENT_IP"]


@pytest.mark.parametrize("value", [client_ip_from_header, f"{__name__}.client_ip_from_header"])
def test_ratelimit_ip_meta_key_callable_or_dotted_path(settings, value):
    """A callable, or a dotted path to one, "will be passed the full request object" and returns the address."""
    settings.RATELIMIT_IP_META_KEY = value
    request = rf.get("/", REMOTE_ADDR="203.0.113.9", HTTP_X_CLIENT_IP="192.0.2.44")
    assert key_value("ip", request, "g") == "192.0.2.44"


def test_ratelimit_ip_meta_key_names_a_meta_key_and_the_decorator_uses_it(settings):
    """ "Any other string will be treated as a key for the request.META object", e.g. 'HTTP_X_REAL_IP'."""
    settings.RATELIMIT_IP_META_KEY = "HTTP_X_REAL_IP"
    client = f"192.0.2.{uuid.uuid4().int % 250 + 1}"
    view = ratelimit(key="ip", rate="1/m", group=grp())(ok)
    assert calls(view, rf.get("/", REMOTE_ADDR=ip(), HTTP_X_REAL_IP=client), 1) == ["ok"]
    assert calls(view, rf.get("/", REMOTE_ADDR=ip(), HTTP_X_REAL_IP=client), 1) == ["blocked"]
    # One idea of the client address: analytics reads the same source.
    assert str(client_ip(rf.get("/", REMOTE_ADDR=ip(), HTTP_X_REAL_IP=client))) == client


def test_ratelimit_ip_meta_key_header_is_believed_only_from_trusted_proxies(settings, hotcache_config):
    """hotcache (documented): once TRUSTED_PROXIES is set, an HTTP_* META key is read only when the peer is a
    trusted proxy; any other peer is keyed on its own address (a client cannot pick its bucket)."""
    settings.RATELIMIT_IP_META_KEY = "HTTP_X_REAL_IP"
    hotcache_config(TRUSTED_PROXIES=["10.0.0.0/8"])
    via_proxy = rf.get("/", REMOTE_ADDR="10.1.2.3", HTTP_X_REAL_IP="192.0.2.7")
    direct = rf.get("/", REMOTE_ADDR="203.0.113.9", HTTP_X_REAL_IP="192.0.2.7")
    assert key_value("ip", via_proxy, "g") == "192.0.2.7"
    assert key_value("ip", direct, "g") == "203.0.113.9"


def test_ratelimit_ip_meta_key_without_a_usable_value_falls_back_to_the_peer(settings):
    """Difference (documented): django-ratelimit raises (ImproperlyConfigured or ValueError, a 500) when the META
    key is missing or not an address; hotcache keys such a request on REMOTE_ADDR."""
    settings.RATELIMIT_IP_META_KEY = "HTTP_X_REAL_IP"
    assert key_value("ip", rf.get("/", REMOTE_ADDR="203.0.113.9"), "g") == "203.0.113.9"
    assert key_value("ip", rf.get("/", REMOTE_ADDR="203.0.113.9", HTTP_X_REAL_IP="nonsense"), "g") == "203.0.113.9"


def test_ratelimit_ipv4_mask_groups_addresses(settings):
    """RATELIMIT_IPV4_MASK: "IPv4 mask for IP-based rate limit. Defaults to 32 (which is no masking)"."""
    view = ratelimit(key="ip", rate="1/m", group=grp())(ok)
    assert calls(view, rf.get("/", REMOTE_ADDR="198.51.100.1"), 1) == ["ok"]
    assert calls(view, rf.get("/", REMOTE_ADDR="198.51.100.2"), 1) == ["ok"]  # /32: apart
    settings.RATELIMIT_IPV4_MASK = 24
    view = ratelimit(key="ip", rate="1/m", group=grp())(ok)
    assert calls(view, rf.get("/", REMOTE_ADDR="198.51.100.1"), 1) == ["ok"]
    assert calls(view, rf.get("/", REMOTE_ADDR="198.51.100.200"), 1) == ["blocked"]  # one /24


def test_ratelimit_ipv6_mask_defaults_to_64(settings):
    """RATELIMIT_IPV6_MASK: "Defaults to 64 (which mask the last 64 bits)"; 128 keeps addresses apart."""
    view = ratelimit(key="ip", rate="1/m", group=grp())(ok)
    assert calls(view, rf.get("/", REMOTE_ADDR="2001:db8:1:2::1"), 1) == ["ok"]
    assert calls(view, rf.get("/", REMOTE_ADDR="2001:db8:1:2:ffff::9"), 1) == ["blocked"]  # one /64
    settings.RATELIMIT_IPV6_MASK = 128
    view = ratelimit(key="ip", rate="1/m", group=grp())(ok)
    assert calls(view, rf.get("/", REMOTE_ADDR="2001:db8:1:2::1"), 1) == ["ok"]
    assert calls(view, rf.get("/", REMOTE_ADDR="2001:db8:1:2::2"), 1) == ["ok"]


def test_hotcaches_own_prefix_setting_wins_over_the_mask(settings, hotcache_config):
    settings.RATELIMIT_IPV4_MASK = 24
    hotcache_config(IPV4_PREFIX=32)
    assert key_value("ip", rf.get("/", REMOTE_ADDR="198.51.100.7"), "g") == "198.51.100.7"


hashed: list[bytes] = []


def recording_sha256(data: bytes):
    hashed.append(data)
    return hashlib.sha256(data)


def test_ratelimit_hash_algorithm_derives_the_key_and_values_are_never_stored_raw(settings, raw_redis, key_prefix):
    """RATELIMIT_HASH_ALGORITHM: the function "used to derive the cache key"; security.rst: "Key values are never
    stored in a raw form, even as cache keys"."""
    settings.RATELIMIT_HASH_ALGORITHM = f"{__name__}.recording_sha256"
    hashed.clear()
    secret = f"hunter2-{tag()}"
    view = ratelimit(key="post:password", rate="5/m")(ok)
    assert calls(view, rf.post("/", {"password": secret}), 1) == ["ok"]
    assert any(secret.encode() in data for data in hashed)
    names = [k.decode() for k in raw_redis.scan_iter(f"{key_prefix}:*", count=1000)]
    assert names and not [k for k in names if secret in k]


def test_ratelimit_cache_prefix_is_not_used(settings, raw_redis, key_prefix):
    """Difference (documented): keys start with HOTCACHE['KEY_PREFIX'] whatever RATELIMIT_CACHE_PREFIX says."""
    settings.RATELIMIT_CACHE_PREFIX = "elsewhere:"
    view = ratelimit(key="ip", rate="5/m")(ok)
    calls(view, rf.get("/", REMOTE_ADDR=ip()), 1)
    assert not list(raw_redis.scan_iter("elsewhere:*", count=1000))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RATELIMIT_ENABLE", "no"),
        ("RATELIMIT_FAIL_OPEN", 1),
        ("RATELIMIT_USE_CACHE", 3),
        ("RATELIMIT_CACHE_PREFIX", None),
        ("RATELIMIT_VIEW", "tests.nowhere.view"),
        ("RATELIMIT_VIEW", 42),
        ("RATELIMIT_IP_META_KEY", 42),
        ("RATELIMIT_IP_META_KEY", "tests.nowhere.client_ip"),
        ("RATELIMIT_IPV4_MASK", 33),
        ("RATELIMIT_IPV6_MASK", "64"),
        ("RATELIMIT_HASH_ALGORITHM", "hashlib.nothing"),
        ("RATELIMIT_EXCEPTION_CLASS", "hashlib.sha256"),
    ],
)
def test_a_wrong_django_ratelimit_setting_is_a_check_error_naming_it(settings, name, value):
    from hotcache.checks.ratelimit import check_django_ratelimit_settings

    setattr(settings, name, value)
    errors = [m for m in check_django_ratelimit_settings() if m.id == "hotcache.E090"]
    assert len(errors) == 1 and errors[0].msg.startswith(f"{name}=")


def test_valid_django_ratelimit_settings_pass_the_checks(settings):
    from hotcache.checks.ratelimit import check_django_ratelimit_settings

    settings.MIDDLEWARE = [*settings.MIDDLEWARE, MIDDLEWARE]
    for name, value in (
        ("RATELIMIT_ENABLE", True),
        ("RATELIMIT_FAIL_OPEN", False),
        ("RATELIMIT_VIEW", f"{__name__}.ratelimited_error"),
        ("RATELIMIT_IP_META_KEY", "REMOTE_ADDR"),
        ("RATELIMIT_IPV4_MASK", 24),
        ("RATELIMIT_IPV6_MASK", 48),
        ("RATELIMIT_HASH_ALGORITHM", "hashlib.sha512"),
        ("RATELIMIT_EXCEPTION_CLASS", "hotcache.ratelimit.Ratelimited"),
    ):
        setattr(settings, name, value)
    assert check_django_ratelimit_settings() == []


def test_the_check_warns_about_a_header_ip_source_without_trusted_proxies(settings):
    from hotcache.checks.ratelimit import check_django_ratelimit_settings

    settings.RATELIMIT_IP_META_KEY = "HTTP_X_REAL_IP"
    assert [m.id for m in check_django_ratelimit_settings()] == ["hotcache.W011"]


def test_the_check_warns_when_django_ratelimits_middleware_is_still_installed(settings):
    from hotcache.checks.ratelimit import check_django_ratelimit_settings

    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django_ratelimit.middleware.RatelimitMiddleware"]
    assert [m.id for m in check_django_ratelimit_settings()] == ["hotcache.W014"]
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "django_ratelimit" not in m]
    settings.RATELIMIT_VIEW = f"{__name__}.ratelimited_error"
    assert [m.id for m in check_django_ratelimit_settings()] == ["hotcache.W014"]


# --- keys.rst ------------------------------------------------------------------------------------------------


def test_ip_get_post_keys():
    """'ip' is REMOTE_ADDR; 'get:X' request.GET['X']; 'post:X' request.POST['X']."""
    for key, make in (
        ("ip", lambda v: rf.get("/", REMOTE_ADDR=v)),
        ("get:X", lambda v: rf.get("/", {"X": v}, REMOTE_ADDR=ip())),
        ("post:X", lambda v: rf.post("/", {"X": v}, REMOTE_ADDR=ip())),
    ):
        view, value = ratelimit(key=key, rate="1/m", group=grp())(ok), ip()
        assert calls(view, make(value), 1) + calls(view, make(value), 1) + calls(view, make(ip()), 1) == [
            "ok",
            "blocked",
            "ok",
        ], key


def _with_user(request, user):
    request.user = user
    return request


def test_user_key_and_anonymous_users_share_one_bucket():
    """'user': a value from request.user; "Do not use with unauthenticated users" (they all share one bucket)."""
    view = ratelimit(key="user", rate="1/m", group=grp())(ok)
    alice, bob = SimpleNamespace(is_authenticated=True, pk=1), SimpleNamespace(is_authenticated=True, pk=2)
    assert calls(view, _with_user(rf.get("/", REMOTE_ADDR=ip()), alice), 2) == ["ok", "blocked"]
    assert calls(view, _with_user(rf.get("/", REMOTE_ADDR=ip()), bob), 1) == ["ok"]
    assert calls(view, _with_user(rf.get("/", REMOTE_ADDR=ip()), AnonymousUser()), 1) == ["ok"]
    assert calls(view, _with_user(rf.get("/", REMOTE_ADDR=ip()), AnonymousUser()), 1) == ["blocked"]


def test_user_or_ip_key():
    """'user_or_ip': the user when authenticated, else the address."""
    view = ratelimit(key="user_or_ip", rate="1/m", group=grp())(ok)
    addr, member = ip(), SimpleNamespace(is_authenticated=True, pk=3)
    assert calls(view, _with_user(rf.get("/", REMOTE_ADDR=addr), AnonymousUser()), 1) == ["ok"]
    assert calls(view, _with_user(rf.get("/", REMOTE_ADDR=addr), member), 1) == ["ok"]  # not the address's
    assert calls(view, _with_user(rf.get("/", REMOTE_ADDR=ip()), member), 1) == ["blocked"]


def test_missing_header_get_and_post_values_share_one_bucket():
    """ "Missing headers, GET, and POST values will all be treated as empty strings, and ratelimited in the same
    bucket"."""
    for key in ("header:x-team", "get:team", "post:team"):
        view = ratelimit(key=key, rate="1/m", group=grp())(ok)
        assert calls(view, rf.post("/", REMOTE_ADDR=ip()), 1) == ["ok"]
        assert calls(view, rf.post("/", REMOTE_ADDR=ip()), 1) == ["blocked"], key


def team_key(group, request):
    return f"{group}:{request.META.get('HTTP_X_TEAM')}"


def test_other_strings_are_dotted_paths_to_key_functions():
    """keys.rst, String values: any other string is "the dotted Python path to a callable"."""
    view = ratelimit(key=f"{__name__}.team_key", rate="1/m", group=grp())(ok)
    team = tag()
    assert calls(view, rf.get("/", HTTP_X_TEAM=team), 2) == ["ok", "blocked"]
    assert calls(view, rf.get("/", HTTP_X_TEAM=tag()), 1) == ["ok"]


def test_a_key_callable_gets_the_group_and_the_request_and_may_return_bytes():
    """Callable values: "called with two arguments, the group and the request"; "a bytestring or unicode"."""
    seen = []

    def my_key(group, request):
        seen.append((group, request.method))
        return (request.META["REMOTE_ADDR"] + "/x").encode()

    group = grp()
    view = ratelimit(key=my_key, rate="1/m", group=group)(ok)
    addr = ip()
    assert calls(view, rf.get("/", REMOTE_ADDR=addr), 2) == ["ok", "blocked"]
    assert calls(view, rf.get("/", REMOTE_ADDR=ip()), 1) == ["ok"]
    assert seen[0] == (group, "GET")


# --- rates.rst, cookbook/per-user.rst ------------------------------------------------------------------------


def my_rate(group, request):
    return "1000/m" if request.user.is_authenticated else (1, 60)


def test_callable_and_dotted_rates_return_a_string_or_a_tuple():
    """Callables (or dotted paths, "assumed if there is a . in the value") get (group, request) and return a
    rate string or (count, seconds); the per-user cookbook passes rate='myapp.ratelimits.per_user'."""
    view = ratelimit(key="ip", rate=f"{__name__}.my_rate", group=grp())(ok)
    addr = ip()
    assert calls(view, _with_user(rf.get("/", REMOTE_ADDR=addr), AnonymousUser()), 2) == ["ok", "blocked"]
    member = SimpleNamespace(is_authenticated=True, pk=9)
    assert calls(view, _with_user(rf.get("/", REMOTE_ADDR=addr), member), 3) == ["ok"] * 3


# --- security.rst ---------------------------------------------------------------------------------------------


def test_a_reverse_proxy_middleware_setting_remote_addr_feeds_the_ip_key():
    """Remediation, Middleware: a middleware sets REMOTE_ADDR to the client address; key='ip' then uses it."""

    def reverse_proxy(get_response):
        def process_request(request):
            request.META["REMOTE_ADDR"] = request.META["HTTP_X_REAL_IP"]
            return get_response(request)

        return process_request

    stack = reverse_proxy(ratelimit(key="ip", rate="1/m", group=grp())(ok))
    client = ip()
    assert stack(rf.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_REAL_IP=client)).content == b"ok"
    with pytest.raises(Ratelimited):
        stack(rf.get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_REAL_IP=client))


def test_a_header_key_for_a_simple_client_ip_header():
    """Remediation, Ratelimit keys: @ratelimit(key='header:x-real-ip', rate='10/s') (here 1/m)."""
    view = ratelimit(key="header:x-real-ip", rate="1/m", group=grp())(ok)
    client = ip()
    assert calls(view, rf.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_REAL_IP=client), 1) == ["ok"]
    assert calls(view, rf.get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_REAL_IP=client), 1) == ["blocked"]


def test_ip_and_username_limits_together_for_a_login_view():
    """Brute force: @ratelimit(key='ip') stacked with @ratelimit(key='post:username')."""

    @ratelimit(key="ip", rate="3/m")
    @ratelimit(key="post:username", rate="2/m")
    def login_view(request):
        return HttpResponse("ok")

    user, addr = f"u-{tag()}", ip()
    out = calls(login_view, rf.post("/", {"username": user}, REMOTE_ADDR=ip()), 3)
    assert out == ["ok", "ok", "blocked"]  # one username from many addresses
    out = [calls(login_view, rf.post("/", {"username": f"u-{tag()}"}, REMOTE_ADDR=addr), 1)[0] for _ in range(4)]
    assert out == ["ok", "ok", "ok", "blocked"]  # many usernames from one address


# --- the hot path ---------------------------------------------------------------------------------------------


def test_one_round_trip_per_decision_with_every_setting_in_use(settings, hotcache_config):
    """The django-ratelimit settings cost no Redis call: one EVALSHA per decorator decision."""
    settings.RATELIMIT_IP_META_KEY = "HTTP_X_REAL_IP"
    settings.RATELIMIT_IPV4_MASK = 24
    settings.RATELIMIT_HASH_ALGORITHM = "hashlib.sha512"
    settings.RATELIMIT_FAIL_OPEN = True
    hotcache_config(TRUSTED_PROXIES=["10.0.0.0/8"])
    view = ratelimit(key="ip", rate="100/m", group=grp())(ok)
    request = rf.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_REAL_IP=ip())
    view(request)  # loads the script
    with count_redis() as counted:
        for _ in range(5):
            view(request)
    assert (counted.commands, counted.round_trips) == (5, 5)
