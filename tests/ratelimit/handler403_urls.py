"""URLconf with django-ratelimit's documented handler403 (usage.rst, Exceptions): a Ratelimited answered 429."""

from django.http import HttpResponse, HttpResponseForbidden
from django.urls import path

from hotcache.ratelimit import Ratelimited
from tests.ratelimit.test_django_ratelimit_docs import forbidden_view, limited_view


def handler403(request, exception=None):
    if isinstance(exception, Ratelimited):
        return HttpResponse("Sorry you are blocked", status=429)
    return HttpResponseForbidden("Forbidden")


urlpatterns = [path("limited/", limited_view), path("forbidden/", forbidden_view)]
