"""URLconf the demo runs under: the demo views, hotcache's own URLs and the admin."""

from django.contrib import admin
from django.urls import include, path

from hotcache.demo import views

urlpatterns = [
    path("", views.home, name="demo-home"),
    path("me/", views.whoami, name="demo-whoami"),
    path("admin/", admin.site.urls),
    path("hotcache/", include("hotcache.urls")),
    # ratelimit
    path("rl/login/", views.ratelimit_login, name="demo-rl-login"),
    path("rl/api/", views.ratelimit_api, name="demo-rl-api"),
]
