"""URLconf for the rate limiting tests: plain, decorated (sync and async) views."""

from django.http import HttpResponse, JsonResponse
from django.urls import path

from hotcache.ratelimit import UNSAFE, ratelimit


def plain(request):
    results = getattr(request, "ratelimit", None)
    return JsonResponse({"rules": sorted(r.name for r in results.results) if results else []})


async def async_plain(request):
    results = getattr(request, "ratelimit", None)
    return JsonResponse({"rules": sorted(r.name for r in results.results) if results else []})


@ratelimit(key="ip", rate="2/m")
def decorated(request):
    return HttpResponse("ok")


@ratelimit(key="ip", rate="2/m", block=False)
def soft(request):
    return HttpResponse("limited" if request.limited else "ok")


@ratelimit(key="ip", rate="1/m", method=UNSAFE)
def unsafe_only(request):
    return HttpResponse("ok")


@ratelimit(key="ip", rate="2/m")
async def async_decorated(request):
    return HttpResponse("ok")


urlpatterns = [
    path("login/", plain, name="login"),
    path("api/items/", plain, name="items"),
    path("other/", plain, name="other"),
    path("async/", async_plain, name="async-plain"),
    path("deco/", decorated),
    path("soft/", soft),
    path("unsafe/", unsafe_only),
    path("adeco/", async_decorated),
]
