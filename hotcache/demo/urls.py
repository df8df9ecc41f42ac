"""URLconf the demo runs under: the demo views, hotcache's own URLs and the admin."""

from django.contrib import admin
from django.urls import include, path

from hotcache.demo import views

urlpatterns = [
    path("", views.home, name="demo-home"),
    path("me/", views.whoami, name="demo-whoami"),
    path("admin/", admin.site.urls),
    path("hotcache/", include("hotcache.urls")),
    # apikeys
    path("api/usage/", views.api_usage, name="demo-api-usage"),
    path("api/usage-async/", views.api_usage_async, name="demo-api-usage-async"),
]
