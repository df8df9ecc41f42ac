from django.contrib import admin
from django.urls import include, path

from config.demo import views as demo_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("hotcache/", include("hotcache.urls")),
    path("", demo_views.home, name="demo-home"),
    path("me/", demo_views.whoami, name="demo-whoami"),
]
