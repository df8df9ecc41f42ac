"""URLconf the demo runs under: the demo views, hotcache's own URLs and the admin."""

from django.contrib import admin
from django.urls import include, path

from hotcache.demo import views

urlpatterns = [
    path("", views.home, name="demo-home"),
    path("me/", views.whoami, name="demo-whoami"),
    path("admin/", admin.site.urls),
    path("hotcache/", include("hotcache.urls")),
    # mfa
    path("mfa/issue/", views.mfa_issue, name="demo-mfa-issue"),
    path("mfa/verify/", views.mfa_verify, name="demo-mfa-verify"),
]
